"""An exported ONNX model (`alexnet export`, fp32 or `--int8`) read back as a model that predict, evaluate,
serve and benchmark run as they run a checkpoint: the JSON beside it gives the class names and the
preprocessing, and ONNX Runtime computes on the CPU.

The file returns probabilities (softmax is part of it); `OnnxModel` hands the commands their logarithm, whose
softmax is those probabilities again and whose cross-entropy is the model's, so every command's loss, top-k
and confidence come out as they do for a checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import CheckpointError, MissingExtra, first_line

ONNX_SUFFIX = ".onnx"
INPUT, OUTPUT = "image", "probabilities"
# The smallest positive float32: log() of a probability that underflowed to 0 stays finite.
TINY = torch.finfo(torch.float32).tiny


def is_onnx(path: Path | str | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ONNX_SUFFIX


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtra("ONNX models run in ONNX Runtime, which needs the export extra", "export",
                           exc.name) from None
    return onnxruntime


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU, with as many compute threads as torch uses (one process, one
    budget of cores)."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings are about graph rewrites, not the user's to act on
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged or foreign file: onnxruntime's messages are long
        raise CheckpointError(f"{path} is not a model ONNX Runtime can run ({first_line(exc)[:200]})") from None


class OnnxModel(nn.Module):
    """An ONNX Runtime session as an nn.Module: a float batch N x 3 x S x S in, log-probabilities out."""

    def __init__(self, path: Path, precision: str, threads: int | None = None, source: str | None = None) -> None:
        super().__init__()
        self.path, self.precision, self.source = Path(path), precision, source  # source: the checkpoint
        self.session = session(self.path, threads)
        names = [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]
        if names != ([INPUT], [OUTPUT]):
            raise CheckpointError(f"{path} is not a model alexnet export wrote: it takes {names[0]} and gives "
                                  f"{names[1]}, not ['{INPUT}'] and ['{OUTPUT}']")
        # No weights that torch sees: this empty buffer says what the model takes (float32, on the CPU).
        self.register_buffer("takes", torch.zeros(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()  # NCHW, as the file declares
        (probabilities,) = self.session.run([OUTPUT], {INPUT: batch})
        return torch.from_numpy(probabilities).clamp_min(TINY).log()

    def to(self, *args, **kwargs):  # the session stays where it is: on the CPU, in the file's own precision
        return self

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.precision}, ONNX Runtime"


@dataclass(frozen=True)
class OnnxFile:
    """An exported model and what its JSON says: the classes, display names and preprocessing."""

    path: Path
    metadata: dict[str, Any]
    class_names: tuple[str, ...]
    display_names: tuple[str, ...]
    preprocess: Preprocess

    @property
    def precision(self) -> str:
        return "int8" if self.metadata.get("format") == "onnx-int8" else "fp32"


def read_onnx(path: Path | str) -> OnnxFile:
    """The model file and the JSON beside it (same name, .json), checked: CheckpointError in one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model not found: {path}")
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        names = tuple(str(name) for name in meta["class_names"])
        labels = tuple(str(name) for name in meta.get("labels") or names)
        preprocess = Preprocess.from_dict(meta["preprocess"])
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {meta_path.name} beside it: the JSON alexnet export writes with "
                              "the model holds its class names and preprocessing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path} is not the JSON alexnet export writes ({first_line(exc)})") from None
    if not names or len(labels) != len(names):
        raise CheckpointError(f"{meta_path} lists {len(names)} class names and {len(labels)} labels")
    return OnnxFile(path, meta, names, labels if labels != names else (), preprocess)
