"""One device policy for every command: `--device auto|cpu|cuda|cuda:N|mps` and the original's `--no-cuda`."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
