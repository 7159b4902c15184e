"""`alexnet benchmark`: every way to run a trained model on this machine, measured in one run, in one table.

The rows: PyTorch in fp32, bf16 and fp16 (as `predict` runs them: channels_last, the weights cast), ONNX
Runtime in fp32 and int8, and TorchScript. The columns: the weights' size on disk, top-1 on a labelled folder
(evaluate's own loop, so it equals what `alexnet evaluate` reports), the median latency of one image, images/s
at batch 32, and the process's peak memory while the row was built and run. A row that cannot run here says
why in its cell instead.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet_cli.artifacts.checkpoint import Checkpoint, load_checkpoint
from alexnet_cli.data import folders as datamod
from alexnet_cli.errors import AlexNetError, ConfigError
from alexnet_cli.inference.evaluate import top1
from alexnet_cli.inference.int8 import calibrated_here, cpu_flags, int8_support, median_seconds, run_images
from alexnet_cli.inference.onnx_model import OnnxModel, is_onnx
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.context import Runtime, prepare_for_inference
from alexnet_cli.runtime.device import resolve_device
from alexnet_cli.runtime.precision import Precision, cpu_native_bf16, cuda_native_bf16
from alexnet_cli.runtime.system import cpu_name

LATENCY_RUNS = 15
THROUGHPUT_RUNS = 3
BATCH = 32
ROWS = ("PyTorch fp32", "PyTorch bf16", "PyTorch fp16", "ONNX Runtime fp32", "ONNX Runtime int8", "TorchScript fp32")


@dataclass
class Row:
    name: str
    size_mb: float | None = None
    top1: float | None = None
    latency_ms: float | None = None  # batch 1, median
    images_per_second: float | None = None  # batch 32, median
    peak_mb: float | None = None
    device: str = "cpu"
    note: str = ""  # where it came from, or why it did not run
    ran: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ran": self.ran, "device": self.device, "size_mb": self.size_mb,
                "top1": self.top1, "latency_ms_batch_1": self.latency_ms,
                "images_per_second_batch_32": self.images_per_second, "peak_memory_mb": self.peak_mb,
                "note": self.note}


@dataclass
class BenchmarkResult:
    machine: str
    data: str
    images: int
    image_size: int
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "data": self.data, "images": self.images, "image_size": self.image_size,
                "batch": BATCH, "rows": [row.to_dict() for row in self.rows]}


def machine_line(device: torch.device) -> str:
    """The CPU's name and what it computes with, or the GPU's name and compute capability."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}), torch {torch.__version__}"
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
             if f in flags]
    return (f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; flags "
            f"{' '.join(shown) or 'unknown'}; int8: {int8_support().kind}; native bf16: "
            f"{'yes' if cpu_native_bf16() else 'no'}; torch {torch.__version__}")


@contextlib.contextmanager
def peak_memory() -> Iterator[Callable[[], float | None]]:
    """The process's peak resident memory (MB) from here on: Linux resets the high-water mark (VmHWM) to the
    memory resident now when 5 is written to /proc/self/clear_refs. Elsewhere, None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        known = True
    except OSError:
        known = False

    def read() -> float | None:
        if not known:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    yield read


def _release() -> None:
    """Free what the last row held, and hand glibc's freed pages back (malloc_trim), so that the next row's
    peak is its own."""
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _weights_mb(model: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


@dataclass(frozen=True)
class BenchmarkSettings:
    weights: Path
    data: Path | None = None
    int8: Path | None = None  # an int8 model made with export --int8; default: the one beside the weights
    device: str = "auto"
    batch_size: int = 64


def _validation(checkpoint: Checkpoint, data: Path | None) -> tuple[datamod.ImageSet, str]:
    if data is not None:
        return datamod.load_image_folder(data, classes=checkpoint.class_names, check="none"), str(data)
    _, held, _, source = run_images(checkpoint)
    if held is None:
        raise ConfigError(f"{checkpoint.path} comes from a run that trained without validation: give --data DIR")
    return held, source


def benchmark(settings: BenchmarkSettings, observer: Observer,
              step: Callable[[str], None] = lambda name: None) -> BenchmarkResult:
    """Each row in turn (`step(name)` as it starts), the model of one freed before the next is built."""
    if is_onnx(settings.weights):
        raise ConfigError("benchmark starts from the checkpoint (.pt), and makes each way to run it from there; "
                          f"give the checkpoint {Path(settings.weights).with_suffix('').with_suffix('.pt')}")
    checkpoint = load_checkpoint(settings.weights)
    choice = resolve_device(settings.device)
    device = choice.device
    images, source = _validation(checkpoint, settings.data)
    size = checkpoint.preprocess.image_size
    result = BenchmarkResult(machine_line(device), source, len(images.labels), size)
    observer.info(f"machine: {result.machine}")
    observer.info(f"top-1 on {len(images.labels):,} images: {source}")
    int8_path = settings.int8 or Path(settings.weights).with_suffix(".int8.onnx")
    with tempfile.TemporaryDirectory(prefix="alexnet-benchmark-") as temporary:
        folder = Path(temporary)
        for name in ROWS:
            step(name)
            row = Row(name, device="cpu" if "ONNX" in name else str(device))
            try:
                model, row_runtime = _build(name, checkpoint, device, folder, int8_path, row)
                if model is not None:
                    _release()  # what building it took (an export, a calibration) is not what running it takes
                    with peak_memory() as peak:
                        _measure(model, row_runtime, images, checkpoint, settings.batch_size, size, row)
                        row.peak_mb = peak()
            except AlexNetError as exc:
                row.ran, row.note = False, str(exc)
            model = None
            _release()
            result.rows.append(row)
    return result


def _measure(model, runtime: Runtime, images, checkpoint: Checkpoint, batch_size: int, size: int, row: Row) -> None:
    dtype = runtime.precision.dtype
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(runtime.device, dtype).contiguous(memory_format=torch.channels_last)
    row.latency_ms = 1000 * median_seconds(model, x[:1], LATENCY_RUNS)
    row.images_per_second = BATCH / median_seconds(model, x, THROUGHPUT_RUNS)
    row.top1 = top1(model, images, checkpoint.preprocess, len(checkpoint.class_names), runtime, batch_size)


def _runtime(device: torch.device, precision: str) -> Runtime:
    return Runtime(device, str(device), Precision(precision, precision), 0)


def _build(name: str, checkpoint: Checkpoint, device: torch.device, folder: Path, int8_path: Path, row: Row):
    """The row's model and the runtime it runs under, or (None, None) with `row` saying why not."""
    def skip(why: str):
        row.ran, row.note = False, why
        return None, None

    if name.startswith("PyTorch"):
        precision = name.split()[1]
        if precision == "fp16" and device.type != "cuda":
            return skip("needs a GPU")
        if precision == "bf16":
            native = cuda_native_bf16(device) if device.type == "cuda" else (
                device.type == "cpu" and cpu_native_bf16())
            if not native:
                return skip(f"no native bf16 on this {'GPU' if device.type == 'cuda' else 'CPU'}: it would be "
                            "emulated, slower than fp32")
        runtime = _runtime(device, precision)
        model = prepare_for_inference(checkpoint.build(), device, runtime.precision)
        row.size_mb = _weights_mb(model)
        row.note = "the weights cast, channels_last (as predict runs them)"
        return model, runtime
    cpu = _runtime(torch.device("cpu"), "fp32")
    if name == "TorchScript fp32":
        from alexnet_cli.inference.export import export

        exported = export(checkpoint, "torchscript", folder / "model.torchscript.pt").model_path
        row.size_mb = exported.stat().st_size / 1e6
        row.device = str(device)
        with _quiet():
            model = LogOf(torch.jit.load(str(exported), map_location=device).eval())
        row.note = "alexnet export --format torchscript"
        return model, _runtime(device, "fp32")
    if name == "ONNX Runtime fp32":
        from alexnet_cli.inference.export import export

        exported = export(checkpoint, "onnx", folder / "model.onnx").model_path
        row.size_mb = exported.stat().st_size / 1e6
        row.note = "alexnet export --format onnx"
        return OnnxModel(exported, "fp32"), cpu
    # ONNX Runtime int8: the one export --int8 wrote beside the weights, or one calibrated here as it would be
    if not int8_path.is_file():
        int8_path, row.note = calibrated_here(checkpoint, folder)
    else:
        row.note = f"{int8_path} (alexnet export --int8)"
    row.size_mb = int8_path.stat().st_size / 1e6
    return OnnxModel(int8_path, "int8"), cpu


class LogOf(torch.nn.Module):
    """A model that returns probabilities (an export: softmax included), returning their logarithm: what
    evaluate's loop takes as logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().clamp_min(torch.finfo(torch.float32).tiny).log()


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

