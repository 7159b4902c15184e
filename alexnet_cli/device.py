"""One device policy for every command: `--device auto|cpu|cuda|cuda:N|mps` and the original's `--no-cuda`."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alexnet_cli.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    import torch

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """Reject a malformed `--device` before anything heavy is imported."""
    if not _DEVICE_PATTERN.match(name):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str  # one line for the user: what was picked and why


def resolve_device(name: str = "auto", *, no_cuda: bool = False) -> DeviceChoice:
    """auto: CUDA when present (unless --no-cuda), then Apple's MPS, then the CPU."""
    import torch

    check_device_name(name)
    if no_cuda and name.startswith("cuda"):
        raise ConfigError(f"--no-cuda contradicts --device {name}: drop one of them")
    if name == "auto":
        if not no_cuda and torch.cuda.is_available():
            index = torch.cuda.current_device()
            label = torch.cuda.get_device_name(index)
            return DeviceChoice(torch.device("cuda", index), f"auto: cuda:{index} ({label})")
        if _mps_available():
            return DeviceChoice(torch.device("mps"), "auto: mps (Apple GPU)")
        why = "--no-cuda given" if no_cuda else "no CUDA or MPS device found"
        return DeviceChoice(torch.device("cpu"), f"auto: cpu ({why})")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} asked for CUDA, but none is available: use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"--device {name}: there is no GPU {index} (found {count}, numbered from 0)")
        # The current device too: pinned memory, cuDNN handles and anything else that takes "the" GPU.
        torch.cuda.set_device(index)
        return DeviceChoice(torch.device("cuda", index), f"cuda:{index} ({torch.cuda.get_device_name(index)})")
    if name == "mps":
        if not _mps_available():
            raise DeviceError("--device mps asked for Apple's GPU, but MPS is not available: use --device cpu")
        return DeviceChoice(torch.device("mps"), "mps (Apple GPU)")
    return DeviceChoice(torch.device("cpu"), "cpu")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


# ---------------------------------------------------------------------------------------------- precision

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# auto picks bf16 on a CPU only when it measured clearly faster than fp32 there: some CPUs that advertise
# avx512_bf16 (virtual machines that hide AMX, for one) run bf16 convolutions slower than fp32.
BF16_MIN_SPEEDUP = 1.2


def check_precision_name(name: str) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}: use {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Precision:
    """The numeric format a command computes in, and one line saying why."""

    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def reduced(self) -> bool:
        return self.name != "fp32"

    def autocast(self, device: torch.device):
        """Mixed precision for training: weights and optimizer state stay fp32, matmuls and convs run reduced."""
        import torch

        return torch.autocast(device.type, dtype=self.dtype, enabled=self.reduced)


# bf16 tensor cores arrived with Ampere (compute capability 8.0). Older GPUs (T4, V100) emulate bf16 and
# run it slower than fp16, though torch.cuda.is_bf16_supported() counts the emulation as support.
CUDA_BF16_CAPABILITY = (8, 0)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the chosen GPU (not whichever is current) computes bf16 in hardware."""
    import torch

    return tuple(torch.cuda.get_device_capability(device)) >= CUDA_BF16_CAPABILITY


def mps_bf16() -> bool:
    """MPS computes bf16 from macOS 14 on."""
    import torch

    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(check and check(14, 0))


def cpu_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), asked of the CPU itself."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    if checks:
        return any(check() for check in checks)
    try:  # older torch: read the CPU flags
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=None)
def measure_cpu_bf16_speedup(rounds: int = 3) -> float:
    """fp32 time / bf16 time for an AlexNet-shaped convolution and matmul on this CPU (about 0.2 s, once per
    process: the demo's train, evaluate and predict share one measurement).

    A measurement rather than a table of CPU models: what counts is how the kernels torch ships run on
    the cores we have, and a hypervisor can hide the units that make bf16 fast.
    """
    import time

    import torch

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


def user_cache_dir() -> Path:
    """Where the tool remembers things between runs: $ALEXNET_CACHE_DIR, else the platform's cache folder
    (XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows)/alexnet-cli."""
    if os.environ.get("ALEXNET_CACHE_DIR"):
        return Path(os.environ["ALEXNET_CACHE_DIR"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "alexnet-cli"


def _cpu_key() -> str:
    """What the bf16 measurement depends on: the CPU (as this process sees it), its threads, and torch."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name} | {capability} | native bf16 {cpu_native_bf16()} | {torch.get_num_threads()} threads | " \
           f"torch {torch.__version__}"


def cpu_bf16_speedup() -> tuple[float, str | None]:
    """measure_cpu_bf16_speedup(), remembered per CPU, thread count and torch version in user_cache_dir():
    (the ratio, and the day it was measured when it was remembered, else None). Delete the file to measure
    again; a file that cannot be read or written is measured around."""
    import datetime

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return ratio, None


def resolve_precision(name: str, device: torch.device, *, speedup: float | None = None) -> Precision:
    """--precision auto|fp32|bf16|fp16 on the chosen device.

    auto: CUDA uses bf16 where the GPU has it in hardware (compute capability 8.0 or more), else fp16 (with
    loss scaling); a CPU uses bf16 only where it has native bf16 and bf16 measured at least BF16_MIN_SPEEDUP
    times fp32; MPS stays fp32.
    `speedup` replaces the CPU measurement (tests).
    """
    import torch

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


# ---------------------------------------------------------------------------------------------- running sums


def device_has_float64(device: torch.device) -> bool:
    """Apple's MPS has no float64: a float64 tensor there is an error, not a slow path."""
    return device.type != "mps"


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the running sums of a loop (loss over an epoch, counts across ranks): float64 where the
    device has it, so that tens of thousands of additions lose nothing, else float32."""
    import torch

    return torch.float64 if device_has_float64(device) else torch.float32
