"""One device policy for every command: `--device auto|cpu|cuda|cuda:N|mps` and the original's `--no-cuda`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alexnet_cli.config.vocabulary import check_device_name
from alexnet_cli.errors import ConfigError, DeviceError
from alexnet_cli.runtime.distributed import SINGLE, Dist, backend_for


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str  # one line for the user: what was picked and why


def resolve_device(name: str = "auto", *, no_cuda: bool = False, dist: Dist = SINGLE) -> DeviceChoice:
    """auto: CUDA when present (unless --no-cuda), then Apple's MPS, then the CPU. Under torchrun (`dist`),
    each process takes the GPU of its LOCAL_RANK, or the CPU."""
    check_device_name(name)
    if no_cuda and name.startswith("cuda"):
        raise ConfigError(f"--no-cuda contradicts --device {name}: drop one of them")
    if dist.enabled:
        return _under_torchrun(dist, name, no_cuda)
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


def _under_torchrun(dist: Dist, name: str, no_cuda: bool) -> DeviceChoice:
    """--device under torchrun: each process takes the GPU of its LOCAL_RANK, or the CPU."""
    if name == "mps":
        raise ConfigError("multi-process training runs on CUDA GPUs or the CPU, not on mps")
    if name.startswith("cuda:"):
        raise ConfigError(
            f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; give --device cuda "
            "(or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    use_cuda = (name == "cuda") or (name == "auto" and not no_cuda and torch.cuda.is_available())
    if not use_cuda:
        why = "--device cpu" if name == "cpu" else ("--no-cuda given" if no_cuda else "no CUDA device found")
        return DeviceChoice(torch.device("cpu"), f"cpu, gloo backend ({why}), rank {dist.rank} of {dist.world_size}")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for CUDA, but none is available: use --device cpu or auto")
    count = torch.cuda.device_count()
    if dist.local_rank >= count:
        raise DeviceError(
            f"LOCAL_RANK {dist.local_rank} has no GPU: this node has {count}; start at most {count} processes "
            "per node (--nproc_per_node)"
        )
    torch.cuda.set_device(dist.local_rank)
    label = torch.cuda.get_device_name(dist.local_rank)
    device = torch.device("cuda", dist.local_rank)
    backend = "NCCL" if backend_for(device) == "nccl" else "gloo"
    return DeviceChoice(device, f"cuda:{dist.local_rank} ({label}), {backend} backend, rank {dist.rank} of "
                                f"{dist.world_size}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


# ---------------------------------------------------------------------------------------------- running sums


def device_has_float64(device: torch.device) -> bool:
    """Apple's MPS has no float64: a float64 tensor there is an error, not a slow path."""
    return device.type != "mps"


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the running sums of a loop (loss over an epoch, counts across ranks): float64 where the
    device has it, so that tens of thousands of additions lose nothing, else float32."""
    return torch.float64 if device_has_float64(device) else torch.float32
