"""Export a checkpoint to TorchScript or ONNX, with softmax included and the metadata beside it as JSON.

The exported model takes a float batch N x 3 x S x S, already preprocessed as the JSON says (resize, centre
crop, scale to [0, 1], normalise), and returns class probabilities N x C. Every export is checked against
PyTorch on a sample batch before the command reports success.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet_cli.artifacts.checkpoint import Checkpoint
from alexnet_cli.errors import AlexNetError, ConfigError, MissingExtra, first_line
from alexnet_cli.runtime.files import atomic_write, atomic_write_text

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    metadata_path: Path
    max_difference: float
    sample_shape: tuple[int, ...]


def _with_softmax(model):
    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=1)

    return WithSoftmax(model).eval()


def default_output(checkpoint_path: Path, fmt: str) -> Path:
    return checkpoint_path.with_suffix(FORMATS[fmt] if fmt == "onnx" else ".torchscript.pt")


def metadata(checkpoint: Checkpoint, fmt: str) -> dict[str, Any]:
    size = checkpoint.preprocess.image_size
    return {
        "format": fmt,
        "arch": checkpoint.arch,
        "class_names": list(checkpoint.class_names),
        "labels": list(checkpoint.labels),  # what each output is shown as (its display name, else its folder)
        "preprocess": checkpoint.preprocess.to_dict(),
        "input": {"name": "image", "shape": ["N", 3, size, size], "dtype": "float32",
                  "description": "RGB, resized and centre-cropped, scaled to [0, 1], then normalised"},
        "output": {"name": "probabilities", "shape": ["N", len(checkpoint.class_names)],
                   "description": "softmax over class_names"},
        "source": str(checkpoint.path),
    }


def export(checkpoint: Checkpoint, fmt: str, output: Path | None = None, seed: int = 0) -> ExportResult:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose {' or '.join(FORMATS)}")
    output = Path(output) if output else default_output(checkpoint.path or Path(f"{checkpoint.arch}.pt"), fmt)
    model = _with_softmax(checkpoint.build())
    size = checkpoint.preprocess.image_size
    sample = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(sample)

    actual = _torchscript(model, sample, output) if fmt == "torchscript" else _onnx(model, sample, output)
    difference = float((actual - expected).abs().max())
    metadata_path = output.with_suffix(".json")
    atomic_write_text(metadata_path, json.dumps(metadata(checkpoint, fmt), indent=2) + "\n")
    return ExportResult(output, metadata_path, difference, tuple(sample.shape))


def _torchscript(model, sample, output: Path):
    # TorchScript is deprecated upstream in favour of torch.export, but it is still what C++ (libtorch) and
    # many serving stacks load; its FutureWarnings are not the user's to act on, so they are kept quiet here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, sample)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        atomic_write(output, lambda file: file.write(buffer.getvalue()))
        loaded = torch.jit.load(str(output))
        with torch.no_grad():
            return loaded(sample)


def _onnx(model, sample, output: Path):
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("ONNX export needs the export extra", "export", exc.name) from None

    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model, (sample,), input_names=["image"], output_names=["probabilities"],
            dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
        )
        buffer = io.BytesIO()
        program.save(buffer)
    except Exception as exc:  # the exporter's errors are long; the first line says what failed
        first = first_line(exc)
        raise AlexNetError(f"ONNX export failed: {first}") from None
    atomic_write(output, lambda file: file.write(buffer.getvalue()))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (result,) = session.run(["probabilities"], {"image": sample.numpy()})
    return torch.from_numpy(result)
