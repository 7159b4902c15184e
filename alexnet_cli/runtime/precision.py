"""--precision: the numeric format a command computes in (fp32, bf16 or fp16), chosen per device, and on a CPU
the bf16 measurement that decides auto, remembered in the user cache folder."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import time
from dataclasses import dataclass

import torch

from alexnet_cli.config.vocabulary import check_precision_name
from alexnet_cli.errors import AlexNetError, ConfigError, DeviceError
from alexnet_cli.runtime.files import atomic_write_text
from alexnet_cli.runtime.system import cpu_name, cpu_native_bf16, user_cache_dir

# auto picks bf16 on a CPU only when it measured clearly faster than fp32 there: some CPUs that advertise
# avx512_bf16 (virtual machines that hide AMX, for one) run bf16 convolutions slower than fp32.
BF16_MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    """The numeric format a command computes in, and one line saying why."""

    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    def autocast(self, device: torch.device):
        """Mixed precision for training: weights and optimizer state stay fp32, matmuls and convs run reduced."""
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.reduced)


# bf16 tensor cores arrived with Ampere (compute capability 8.0). Older GPUs (T4, V100) emulate bf16 and
# run it slower than fp16, though torch.cuda.is_bf16_supported() counts the emulation as support.
CUDA_BF16_CAPABILITY = (8, 0)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the chosen GPU (not whichever is current) computes bf16 in hardware."""
    return tuple(torch.cuda.get_device_capability(device)) >= CUDA_BF16_CAPABILITY


def mps_bf16() -> bool:
    """MPS computes bf16 from macOS 14 on."""
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(check and check(14, 0))


@functools.cache
def measure_cpu_bf16_speedup(rounds: int = 3) -> float:
    """fp32 time / bf16 time for an AlexNet-shaped convolution and matmul on this CPU (about 0.2 s, once per
    process: the demo's train, evaluate and predict share one measurement).

    A measurement rather than a table of CPU models: what counts is how the kernels torch ships run on
    the cores we have, and a hypervisor can hide the units that make bf16 fast.
    """
    generator = torch.Generator().manual_seed(0)
    conv_input = torch.randn(4, 96, 27, 27, generator=generator)
    conv_weight = torch.randn(256, 96, 5, 5, generator=generator)
    matrix = torch.randn(512, 2048, generator=generator)
    weight = torch.randn(2048, 1024, generator=generator)

    def timed(dtype) -> float:
        x, w, m, v = (t.to(dtype) for t in (conv_input, conv_weight, matrix, weight))
        with torch.inference_mode():
            x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
            best = float("inf")
            for _ in range(rounds + 1):  # the first round builds the kernels
                start = time.perf_counter()
                torch.nn.functional.conv2d(x, w, padding=2)
                m @ v
                best = min(best, time.perf_counter() - start)
        return best

    return timed(torch.float32) / timed(torch.bfloat16)


SPEEDUP_FILE = "cpu-bf16.json"


def _cpu_key() -> str:
    """What the bf16 measurement depends on: the CPU (as this process sees it), its threads, and torch."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_name()} | {capability} | native bf16 {cpu_native_bf16()} | {torch.get_num_threads()} threads | " \
           f"torch {torch.__version__}"


def cpu_bf16_speedup() -> tuple[float, str | None]:
    """measure_cpu_bf16_speedup(), remembered per CPU, thread count and torch version in user_cache_dir():
    (the ratio, and the day it was measured when it was remembered, else None). Delete the file to measure
    again; a file that cannot be read or written is measured around."""
    path, key = user_cache_dir() / SPEEDUP_FILE, _cpu_key()
    known: dict = {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        known = loaded if isinstance(loaded, dict) else {}
        if key in known:
            return float(known[key]["speedup"]), str(known[key]["measured"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ratio = measure_cpu_bf16_speedup()
    known[key] = {"speedup": round(ratio, 4), "measured": datetime.date.today().isoformat()}
    with contextlib.suppress(AlexNetError):  # a read-only cache folder: measured again next time
        atomic_write_text(path, json.dumps(known, indent=1))
    return ratio, None


def resolve_precision(name: str, device: torch.device, *, speedup: float | None = None) -> Precision:
    """--precision auto|fp32|bf16|fp16 on the chosen device.

    auto: CUDA uses bf16 where the GPU has it in hardware (compute capability 8.0 or more), else fp16 (with
    loss scaling); a CPU uses bf16 only where it has native bf16 and bf16 measured at least BF16_MIN_SPEEDUP
    times fp32; MPS stays fp32.
    `speedup` replaces the CPU measurement (tests).
    """
    check_precision_name(name)
    kind = device.type
    if name == "fp32":
        return Precision("fp32", "fp32 (--precision fp32)")
    if name == "fp16":
        if kind == "cpu":
            raise ConfigError("--precision fp16 needs a GPU: on a CPU use bf16 or fp32")
        return Precision("fp16", "fp16 mixed precision with loss scaling (--precision fp16)")
    if name == "bf16":
        if kind == "cuda" and not cuda_native_bf16(device):
            major, minor = torch.cuda.get_device_capability(device)
            raise DeviceError(f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                              f"{major}.{minor}) has no bf16 units, which need 8.0 or newer; use fp16 or fp32")
        if kind == "mps" and not mps_bf16():
            raise DeviceError("--precision bf16: MPS has bf16 from macOS 14 on; use fp32 (or upgrade macOS)")
        note = "" if kind != "cpu" or cpu_native_bf16() else "; this CPU has no native bf16, so expect it to be slow"
        return Precision("bf16", f"bf16 mixed precision (--precision bf16{note})")
    # auto
    if kind == "cuda":
        if cuda_native_bf16(device):
            return Precision("bf16", "auto: bf16 mixed precision (the GPU computes bf16 in hardware)")
        return Precision("fp16", "auto: fp16 mixed precision with loss scaling (the GPU has no bf16 units: "
                                 "compute capability below 8.0)")
    if kind != "cpu":
        return Precision("fp32", f"auto: fp32 (mixed precision is not used on {kind})")
    if speedup is None and not cpu_native_bf16():
        return Precision("fp32", "auto: fp32 (this CPU has no native bf16)")
    ratio, remembered = cpu_bf16_speedup() if speedup is None else (speedup, None)
    when = "" if remembered is None else f" on {remembered}, remembered in {user_cache_dir() / SPEEDUP_FILE}"
    if ratio >= BF16_MIN_SPEEDUP:
        return Precision("bf16", f"auto: bf16 mixed precision (bf16 measured {ratio:.2f}x fp32 on this CPU{when})")
    return Precision("fp32", f"auto: fp32 (this CPU has native bf16, but it measured {ratio:.2f}x fp32 here{when})")


