"""What this machine is, as the tool needs to know it: the user cache folder where it remembers things between
runs, and the CPU (its name, and whether it computes bf16 in hardware)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch


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


def cpu_name() -> str:
    """The CPU's model name as this process sees it (/proc/cpuinfo on Linux), else the platform's word for it."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    return name


def cpu_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), asked of the CPU itself."""
    found = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    checks: list[Callable[[], bool]] = [check for check in found if check is not None]
    if checks:
        return any(check() for check in checks)
    try:  # older torch: read the CPU flags
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
