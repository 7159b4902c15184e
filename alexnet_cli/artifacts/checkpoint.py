"""Checkpoints: one self-describing file, written atomically and only ever loaded with weights_only=True.

A checkpoint is a dict of tensors and plain values, and `Checkpoint` is its one schema: every writer builds
one and calls `to_payload()`, every reader gets one from `from_payload()` (docs/checkpoint-format.md, which a
test holds to the same keys). The model half is what evaluate, predict and export need; the training half
(`TrainingState`) is what --resume restores.

Plain state_dicts (torchvision's AlexNet, or the original write-up's AlexNet.pkl) are imported on load:
the architecture is recognised from the keys and shapes, so they work wherever a checkpoint does.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import torch

from alexnet_cli import __version__
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import AlexNetError, CheckpointError, first_line
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.models.registry import ARCHITECTURES
from alexnet_cli.runtime.files import atomic_write

FORMAT_VERSION = 1

# The original write-up names its layers conv1..conv5 (each a Sequential with the conv at index 0) and
# `lostlayer` for the classifier; these are the same tensors as our `alexnet`'s features/classifier.
_WRITEUP_KEYS = {
    "conv1.0": "features.0",
    "conv2.0": "features.3",
    "conv3.0": "features.6",
    "conv4.0": "features.8",
    "conv5.0": "features.10",
    "lostlayer.0": "classifier.0",
    "lostlayer.3": "classifier.3",
    "lostlayer.6": "classifier.6",
}


def save_checkpoint(path: str | Path, payload: Mapping[str, Any],
                    serialised: Callable[[], None] | None = None) -> None:
    """Atomically; `serialised()` is called once the tensors have been read (see writer.py).

    Without the zip's CRC32s: torch.load never checks them, and computing them was most of the time a 700 MB
    save took (docs/checkpoint-format.md). Zip tools other than torch's may warn about them.
    """
    def write(file) -> None:
        crc = getattr(torch.serialization, "get_crc32_options", lambda: None)()
        if crc is not None:  # torch < 2.6 has no switch
            torch.serialization.set_crc32_options(False)
        recording = _RecordingFile(file)
        try:
            torch.save(dict(payload), recording)
        except RuntimeError:
            # torch's writer turns a failed write (a full disk) into "unexpected pos ...": say the real reason
            if recording.error is not None:
                raise recording.error from None
            raise
        finally:
            if crc is not None:
                torch.serialization.set_crc32_options(crc)

    atomic_write(path, write, serialised)


class _RecordingFile:
    """A file that remembers the OSError its write raised."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


@dataclass(frozen=True)
class TrainingState:
    """The training half of a checkpoint, written by `alexnet train` into last.pt (and so best.pt)."""

    epoch: int  # epochs completed
    optimizer: Mapping[str, Any]  # optimizer.state_dict()
    scheduler: Mapping[str, Any] | None
    scaler: Mapping[str, Any] | None  # the fp16 gradient scaler, where one is used
    rng: Mapping[str, Any]  # training.state.rng_state()
    run_state: Mapping[str, Any]  # training.state.RunState as a dict
    metrics: Mapping[str, Any] | None  # the last row of metrics.csv
    config: Mapping[str, Any]  # the resolved TrainConfig, as in config.json
    partial: Mapping[str, Any] | None = None  # set when the run stopped inside an epoch (EpochProgress)
    ema: Mapping[str, Any] | None = None  # with --ema: {"weights": the trained weights, "n_averaged": steps}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> TrainingState | None:
        """None where the file holds no training state (a checkpoint cut down to its weights, say)."""
        if "optimizer" not in data or not data.get("config"):
            return None
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True)
class Checkpoint:
    arch: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    dropout: float
    state_dict: Mapping[str, Any]
    training: TrainingState | None = None
    path: Path | None = None  # where it was read from
    display_names: tuple[str, ...] = ()  # what each class is shown as (class_names.json), where it differs

    # The keys of a payload, in the order written: the model half, then TrainingState's fields.
    MODEL_KEYS = ("format_version", "tool_version", "arch", "num_classes", "class_names", "display_names",
                  "preprocess", "dropout", "model")

    @classmethod
    def payload_keys(cls) -> tuple[str, ...]:
        return cls.MODEL_KEYS + tuple(f.name for f in fields(TrainingState))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> tuple[str, ...]:
        """What each output is shown as: its display name, else its folder's name."""
        return self.display_names or self.class_names

    def build(self):
        """The model with these weights, on the CPU, in eval mode."""
        model = build_model(self.arch, num_classes=self.num_classes, dropout=self.dropout, state_dict=self.state_dict)
        return model.eval()

    def to_payload(self) -> dict[str, Any]:
        """The dict torch.save writes. The weights are stored as CPU tensors, so a checkpoint written on a GPU
        opens anywhere, even with a plain torch.load."""
        payload = {
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "display_names": list(self.display_names),
            "preprocess": self.preprocess.to_dict(),
            "dropout": self.dropout,
            "model": {name: tensor.detach().cpu() for name, tensor in self.state_dict.items()},
        }
        if self.training is not None:
            payload.update({f.name: getattr(self.training, f.name) for f in fields(TrainingState)})
        return payload

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], path: Path) -> Checkpoint:
        version = data["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {version!r}, newer than this alexnet-cli understands "
                f"({FORMAT_VERSION}): upgrade alexnet-cli"
            )
        try:
            checkpoint = cls(
                arch=str(data["arch"]),
                class_names=tuple(str(c) for c in data["class_names"]),
                preprocess=Preprocess.from_dict(dict(data["preprocess"])),
                dropout=float(data.get("dropout", 0.5)),
                state_dict=data["model"],
                training=TrainingState.from_payload(data),
                path=path,
                display_names=tuple(str(c) for c in data.get("display_names") or ()),  # none before 0.3.0
            )
        except (KeyError, TypeError, ValueError, AlexNetError) as exc:
            raise CheckpointError(f"{path} is a damaged checkpoint: missing or bad field {exc}") from None
        if checkpoint.arch not in ARCHITECTURES:
            raise CheckpointError(f"{path} is for an unknown architecture {checkpoint.arch!r}")
        if not checkpoint.class_names:
            raise CheckpointError(f"{path} has no class names")
        if checkpoint.display_names and len(checkpoint.display_names) != checkpoint.num_classes:
            raise CheckpointError(f"{path} is a damaged checkpoint: {len(checkpoint.display_names)} display names "
                                  f"for {checkpoint.num_classes} classes")
        return checkpoint

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.to_payload())


def load_checkpoint(path: str | Path, mmap: bool = True) -> Checkpoint:
    """Always weights-only. Memory-mapped by default: a best.pt also holds Adam's two moments, twice the
    weights, which evaluate and predict never read (and so never load). --resume passes mmap=False: its
    optimizer state would stay backed by the file, and Windows cannot replace a file that is mapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols: we report our own error
            warnings.simplefilter("ignore")
            # Only torch's zip format maps; the legacy one (the write-up's AlexNet.pkl, say) is read whole.
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        # weights_only refuses any pickle that would build arbitrary Python objects: nothing in it ran.
        lines = str(exc).strip().splitlines()
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), first_line(exc))
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects that a safe (weights-only) load does not allow "
            f"({detail.strip()}); only use checkpoints from sources you trust"
        ) from None
    except Exception as exc:  # garbage bytes surface as almost any exception from the unpickler
        reason = first_line(exc)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason})") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict")
    if "format_version" in data:
        return Checkpoint.from_payload(data, path)
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return _from_state_dict(path, data)
    raise CheckpointError(f"{path} is not an alexnet-cli checkpoint or a plain AlexNet state_dict")


def _state_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _from_state_dict(path: Path, state: Mapping[str, Any]) -> Checkpoint:
    """Recognise a bare state_dict by comparing its keys and shapes with each architecture's, on meta tensors."""
    state = dict(state)
    if any(key.startswith("lostlayer.") for key in state):
        state = {_WRITEUP_KEYS.get(k.rsplit(".", 1)[0], k.rsplit(".", 1)[0]) + "." + k.rsplit(".", 1)[1]: v
                 for k, v in state.items()}
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel/DDP
    head = "classifier.6.weight"
    if head not in state or state[head].ndim != 2:
        raise CheckpointError(f"{path} is a state_dict, but not of an AlexNet this tool knows")
    num_classes = state[head].shape[0]
    shapes = _state_shapes(state)
    for arch, info in ARCHITECTURES.items():
        with torch.device("meta"):
            reference = build_model(arch, num_classes=num_classes)
        if _state_shapes(reference.state_dict()) == shapes:
            class_names = _default_class_names(arch, num_classes)
            preprocess = Preprocess.for_arch(info.default_image_size, info.default_image_size)
            return Checkpoint(arch, class_names, preprocess, 0.5, state, path=path)
    raise CheckpointError(f"{path} is a state_dict, but its layers match none of: {', '.join(ARCHITECTURES)}")


def _default_class_names(arch: str, num_classes: int) -> tuple[str, ...]:
    if arch == "alexnet-torchvision" and num_classes == 1000:
        from torchvision.models import AlexNet_Weights

        return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    return tuple(f"class_{i}" for i in range(num_classes))
