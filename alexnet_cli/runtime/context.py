"""Where and how a command computes, resolved once for train, evaluate and predict: the device, the precision,
the loader processes and the backend switches; and the few moves every loop makes to put data and models
there."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch

from alexnet_cli.observer import Observer
from alexnet_cli.runtime.device import DeviceChoice, resolve_device
from alexnet_cli.runtime.precision import Precision, resolve_precision


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    device_reason: str  # one line: what was picked and why
    precision: Precision
    workers: int  # loader processes

    @property
    def pin_memory(self) -> bool:
        """Page-locked host memory makes non_blocking copies to CUDA asynchronous."""
        return self.device.type == "cuda"

    def on_onnx_runtime(self, precision: str) -> Runtime:
        """An exported ONNX model's: ONNX Runtime computes it on the CPU, in the file's own precision."""
        return Runtime(torch.device("cpu"), "cpu (an exported model runs in ONNX Runtime, on the CPU)",
                       Precision("fp32", f"{precision}, the exported model's own (--precision does not apply to it)"),
                       self.workers)

    def report(self, observer: Observer) -> None:
        observer.info(f"device: {self.device_reason}")
        observer.info(f"precision: {self.precision.reason}")


def resolve_runtime(device: str, no_cuda: bool, precision: str, workers: int | None,
                    choice: DeviceChoice | None = None) -> Runtime:
    """--device, --no-cuda, --precision and --workers as one Runtime. `choice` is a device already chosen
    (torchrun picks each rank's own)."""
    choice = choice or resolve_device(device, no_cuda=no_cuda)
    resolved = resolve_precision(precision, choice.device)
    configure_backends(choice.device)
    return Runtime(choice.device, choice.reason, resolved, default_workers() if workers is None else workers)


def default_workers() -> int:
    """Loader processes: none on 2 cores or fewer, else cores - 1 (at most 4), leaving a core for the model.

    On 2 cores a worker process competes with the model's two compute threads, and training ran slower with one
    than with none (docs/performance.md, "Loader processes").
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


# Decoding threads for evaluate and predict where no loader process runs (2 cores or fewer, or --workers 0):
# Pillow decodes without the GIL, so two threads overlap the decode with the forward pass; more were no faster
# (docs/performance.md, "Decoding threads").
DECODE_THREADS = 2


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for our fixed input size (one-off cost at the start).

    On the CPU, subnormal floats are flushed to zero. Adam's first moment of a weight whose gradient has gone
    to zero (a dead ReLU's) decays by 0.9 a step into the subnormal range within a few hundred steps, and an x86
    CPU computes on subnormals many times slower (bench/denormals.py measures it; docs/performance.md has the
    figures). Values below 1.2e-38 change nothing a model learns.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        torch.set_flush_denormal(True)  # False, and nothing changes, where the CPU cannot (no SSE3 or AArch64)


def to_device(batch, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A batch of images as the model wants it: on the device, channels_last (NHWC), in the model's dtype.
    A uint8 PixelBatch (data/preprocess.py) is flipped, scaled and normalised there."""
    if hasattr(batch, "to_model"):
        return batch.to_model(device, dtype, torch.channels_last)
    return batch.to(device, dtype=dtype, non_blocking=True, memory_format=torch.channels_last)


def prepare_for_inference(model, device: torch.device, precision: Precision):
    """channels_last, and the weights themselves in bf16/fp16 when reduced: faster than autocast at inference,
    which re-casts every weight on every call (at batch 1 autocast measured slower than fp32)."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    return model.to(precision.dtype) if precision.reduced else model


def model_dtype(model) -> torch.dtype:
    """The dtype the model computes in: its first weight's, or for a model without torch weights (an exported
    ONNX model) its first buffer's."""
    return next(itertools.chain(model.parameters(), model.buffers())).dtype
