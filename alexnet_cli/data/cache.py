"""The decoded-image cache, and the free memory it sizes itself by.

Where the decoded images fit in memory, they are decoded once before the first step and kept, so that no
epoch opens a file again (docs/performance.md). Whether they fit is known before any is decoded: the index
has every image's size from its header. How much may be held follows the memory that is really free: the
machine's, capped by a container's limit, which the kernel enforces by killing the process.
"""

from __future__ import annotations

import ctypes
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from alexnet_cli.data.folders import ImageSet
from alexnet_cli.data.images import UnreadableImage, open_image_in_scope, pillow_warnings, scan_threads
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import ConfigError, DataError
from alexnet_cli.observer import no_progress


def available_memory() -> int | None:
    """Bytes of memory free for new allocations, or None where it cannot be told: the machine's free memory
    (MemAvailable on Linux, the available physical memory on Windows, a guess elsewhere), and no more than
    this process's cgroup still allows (a Docker or Kubernetes memory limit), which the kernel enforces by
    killing the process."""
    known = [free for free in (_machine_available(), _cgroup_available()) if free is not None]
    return min(known) if known else None


def _machine_available() -> int | None:
    if sys.platform == "win32":
        return _windows_available()
    try:
        with open(MEMINFO) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unixes (macOS): half the physical memory, as a guess at what is free
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return None


def _windows_available() -> int | None:
    if sys.platform != "win32":  # ctypes.windll exists on Windows alone
        return None
    class MemoryStatus(ctypes.Structure):  # MEMORYSTATUSEX
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong)] + [
            (name, ctypes.c_ulonglong) for name in ("ullTotalPhys", "ullAvailPhys", "ullTotalPageFile",
                                                    "ullAvailPageFile", "ullTotalVirtual", "ullAvailVirtual",
                                                    "ullAvailExtendedVirtual")]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    try:
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
    except (AttributeError, OSError):
        pass
    return None


# Where Linux shows free memory and a process's control groups; tests point these at fake files.
MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # missing, unreadable, or "max" (no limit)


def _reclaimable(stat: Path, key: str) -> int:
    """Page cache that the kernel drops before it counts against the limit (inactive_file in memory.stat)."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> int | None:
    """What the memory limits of this process's cgroup and its parents still allow (cgroup v2, or v1's
    memory controller), as container tools count it: the limit less the usage that is not reclaimable
    cache. None without a cgroup limit (or off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lines = SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    headroom: list[int] = []
    for line in lines:
        _, controllers, relative = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # v2: one unified tree
            base, files = CGROUP_ROOT, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory controller's own tree
            base, files = CGROUP_ROOT / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")
        else:
            continue
        folder = base / relative.strip("/")
        while True:  # this cgroup and each parent up to the root: the tightest limit counts
            limit, usage = _read_int(folder / files[0]), _read_int(folder / files[1])
            if limit is not None and usage is not None and limit < 2**60:  # v1 writes "no limit" as ~2**63
                headroom.append(max(0, limit - usage + _reclaimable(folder / "memory.stat", files[2])))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(headroom) if headroom else None


def _gib(size: int) -> str:
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    if size < 2**20:
        return f"{size / 2**10:.0f} kB"
    return f"{size / 2**20:.1f} MiB" if size < 10 * 2**20 else f"{size / 2**20:.0f} MiB"


class ImageCache:
    """Images decoded once, before the first step, and held in memory as decode_transforms leaves them (uint8
    at the resize size, about 3 x 256 x 341 bytes for a 4:3 photo), so that no epoch opens a file again.

    Training then does only the random crop, flip and normalisation per image: large photos that take tens of
    milliseconds to decode cost nothing after the first (docs/performance.md). The pixels are the very ones
    the uncached path produces, so a run is the same with or without the cache. The images sit in a few large
    uint8 blocks rather than one tensor each, so that loader processes share them (fork) or receive them
    (spawn) as a handful of shared-memory blocks.

    `auto` caches when the images fit in half the free memory (split between the processes of one machine)
    and otherwise decodes nothing ahead: each epoch reads the files. `ram` insists, and stops with an error
    only when they would not fit in the free memory at all. Both decide from the headers' sizes, before
    decoding anything.
    """

    BLOCK_BYTES = 64 << 20

    def __init__(self, preprocess: Preprocess, mode: str, local_processes: int = 1) -> None:
        if mode not in ("auto", "ram"):
            raise ValueError(mode)
        self.mode = mode
        self.decode = preprocess.decode_transforms()
        self.draft_size = preprocess.resize_size
        free = available_memory()
        share = 0.9 if mode == "ram" else 0.5
        self.free = free
        # Where the free memory cannot be told, auto keeps to a modest 1 GiB and ram, told to insist, takes
        # what it is given.
        self.limit: int | None = int(share * free / max(1, local_processes)) if free is not None else (
            None if mode == "ram" else 2**30)
        self.blocks: list[torch.Tensor] = []
        self.entries: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self.used = 0  # bytes of images held
        self.fill_bytes = 0  # bytes used in the last block
        self.needed: int | None = None  # set when auto gave up: the bytes the images would have taken
        self.images = 0  # how many images that was

    @property
    def accepting(self) -> bool:
        return self.needed is None

    def decoded_bytes(self, sizes: torch.Tensor) -> int:
        """What images of these (width, height) take once decoded: the short side resized to resize_size
        (ShortSideResize), 3 bytes a pixel."""
        short = sizes.min(dim=1).values.long().clamp(min=1)
        long = sizes.max(dim=1).values.long()
        return int(torch.sum(3 * self.draft_size * (self.draft_size * long // short)))

    def fill(self, sets: list[ImageSet], strict: bool, progress=no_progress) -> tuple[list[ImageSet], list[str]]:
        """Decode every image of `sets` into the cache if they fit (else decode nothing, and stop accepting).
        Returns the sets without the images that failed to decode, and why each failed."""
        total = sum(len(images) for images in sets)
        needed = sum(self.decoded_bytes(images.sizes) for images in sets if images.sizes is not None)
        if self.limit is not None and needed > self.limit:
            if self.mode == "ram":
                raise ConfigError(
                    f"--cache ram: the {total:,} decoded images would take {_gib(needed)}, and only "
                    f"{_gib(self.free or 0)} of memory is free; use --cache auto (cache when they fit) or "
                    "--cache off")
            self.needed, self.images = needed, total
            return sets, []
        kept, failures = [], []
        with pillow_warnings(), ThreadPoolExecutor(scan_threads()) as pool, \
                progress("decoding into the cache", total) as advance:
            try:
                for images in sets:
                    keep = []
                    for position, (path, result) in enumerate(zip(images.paths, pool.map(self._load, images.paths))):
                        advance(1)
                        if isinstance(result, str):
                            if strict:
                                raise DataError(f"--strict: {result}")
                            failures.append(result)
                        else:
                            self.add(path, result)
                            keep.append(position)
                    kept.append(images if len(keep) == len(images) else images.subset(keep, images.skipped))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return kept, failures

    def _load(self, path: str):
        try:
            return self.load(path)
        except UnreadableImage as exc:
            return str(exc)

    def load(self, path: str) -> torch.Tensor:
        """Decode one file as the cache holds it (raises UnreadableImage). Safe to call from threads."""
        return self.decode(open_image_in_scope(path, self.draft_size))

    def add(self, path: str, pixels: torch.Tensor) -> None:
        size = pixels.numel()  # fill() has checked, from the headers, that all of them fit
        if not self.blocks or self.fill_bytes + size > self.blocks[-1].numel():
            self.blocks.append(torch.empty(max(self.BLOCK_BYTES, size), dtype=torch.uint8))
            self.fill_bytes = 0
        self.blocks[-1][self.fill_bytes:self.fill_bytes + size] = pixels.reshape(-1)
        self.entries[path] = (len(self.blocks) - 1, self.fill_bytes, tuple(pixels.shape))
        self.fill_bytes += size
        self.used += size

    def get(self, path: str) -> torch.Tensor | None:
        """The cached pixels of `path` (a read-only view: transforms copy before they change anything)."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        block, offset, shape = entry
        return self.blocks[block][offset:offset + shape[0] * shape[1] * shape[2]].view(shape)

    def describe(self) -> str:
        if self.accepting:
            return (f"cache: {len(self.entries)} images decoded once and kept in memory ({_gib(self.used)}); "
                    "no epoch reads a file again")
        allowed = "half the free memory" if self.free is not None else "the free memory could not be told"
        return (f"cache: not used, the {self.images:,} decoded images would take {_gib(self.needed or 0)}, more "
                f"than the {_gib(self.limit or 0)} allowed ({allowed}); each epoch decodes the files "
                "(--cache ram insists)")


def make_cache(mode: str, preprocess: Preprocess, local_processes: int = 1) -> ImageCache | None:
    return None if mode == "off" else ImageCache(preprocess, mode, local_processes)
