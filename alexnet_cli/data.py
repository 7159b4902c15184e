"""Data: safe image opening, class discovery, validation splits, transforms and loaders.

Everything here works on plain paths and (path, label) lists, so that train, evaluate and predict share it.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet_cli.errors import DataError

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Matched case-insensitively, so IMG_0001.JPG counts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# ImageNet statistics, as torchvision's weights use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = tuple[str, int]  # (path, class index)


class UnreadableImage(DataError):
    """A file that cannot be used as an image; the message names the file and why."""


# What Finder, Explorer and zip tools leave in folders they touch. Ignored without a word: they are not the
# user's files, and reporting them as skipped would make --strict refuse every folder opened on a Mac.
OS_METADATA_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".localized"})
OS_METADATA_FOLDERS = frozenset({"__macosx", "$recycle.bin", "system volume information"})


def is_os_metadata(name: str) -> bool:
    """`.DS_Store`, `._photo.jpg` (macOS resource forks), `Thumbs.db`, `desktop.ini`, `__MACOSX/` and kin."""
    folded = name.casefold()
    return folded in OS_METADATA_FILES or folded in OS_METADATA_FOLDERS or folded.startswith("._")


def _visible_folders(names) -> list[str]:
    return sorted(name for name in names if not name.startswith(".") and not is_os_metadata(name))


def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(image):
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float greys scaled, CMYK converted."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto a fixed white background rather than dropping the alpha, which would
        # turn transparent pixels into whatever colour they happen to store.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit (or 32-bit integer) greyscale: scale 0-65535 to 0-255 instead of clipping at 255.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if image.mode == "F":
        return image.point(lambda v: v * 255 if 0 <= v <= 1 else v).convert("L").convert("RGB")
    return image.convert("RGB")


@contextmanager
def _pillow_warnings():
    """Pillow's warnings while images open: a decompression bomb is an error, notes on damaged metadata are
    hidden (the file is judged by whether it decodes). Warning filters are process-wide, so a parallel scan
    enters this once around all its threads rather than once per image."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _open_image(path: str | Path, draft_size: int | None) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # Refuse at Pillow's limit itself, and without relying on the warning filters, which another
            # thread could be changing.
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombWarning(
                    f"{image.width}x{image.height} pixels is over the limit of {Image.MAX_IMAGE_PIXELS}")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode now: a truncated file fails here, not later in a transform
            return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombWarning as exc:
        raise UnreadableImage(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, EOFError,
            ZeroDivisionError, Image.DecompressionBombError) as exc:
        # Pillow's decoders report damaged files through many exception types; none of them is our bug.
        reason = str(exc) or exc.__class__.__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not an image (no image format recognised)"
        if os.path.exists(path) and os.path.getsize(path) == 0:
            reason = "empty file"
        raise UnreadableImage(f"{path}: {reason}") from None


def open_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open one image as RGB with its EXIF orientation applied, or raise UnreadableImage naming it.

    Every failure a file can cause (empty, truncated, not an image, a decompression bomb) becomes
    UnreadableImage, so callers can skip the file and carry on. `draft_size` lets a large JPEG decode at a
    reduced scale (DCT scaling) that is still at least that many pixels on each side.
    """
    with _pillow_warnings():
        return _open_image(path, draft_size)


@dataclass(frozen=True)
class Preprocess:
    """The one definition of preprocessing, stored in every checkpoint and rebuilt by evaluate and predict.

    Training: resize the short side to `resize_size` (about 256/227 of the input, as in the paper), random
    crop to `image_size`, random horizontal flip. Evaluation: the same resize, then a centre crop.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def for_arch(cls, image_size: int, native_size: int) -> Preprocess:
        # 256 is to 227 (or torchvision's 224) as resize_size is to image_size.
        return cls(image_size=image_size, resize_size=round(image_size * 256 / native_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        try:
            return cls(
                image_size=int(data["image_size"]),
                resize_size=int(data["resize_size"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the stored preprocessing is malformed: {exc}") from None

    def decode_transforms(self) -> Callable:
        """The deterministic first half, a PIL image to a uint8 CHW tensor at the resize: what the cache holds."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        return v2.Compose([v2.Resize(self.resize_size, interpolation=mode, antialias=True), v2.PILToTensor()])

    def _tail(self) -> list:
        import torch
        from torchvision.transforms import v2

        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def train_augment(self) -> Callable:
        """The second half for training, from decode_transforms' tensor: random crop, random flip, normalise."""
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.RandomCrop(self.image_size), v2.RandomHorizontalFlip(), *self._tail()])

    def eval_augment(self) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.CenterCrop(self.image_size), *self._tail()])

    def train_transforms(self) -> Callable:
        """A PIL image to a normalised training tensor: decode_transforms then train_augment, the very same ops
        whether an image comes from the file or from the cache."""
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.train_augment()])

    def eval_transforms(self) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.eval_augment()])


@dataclass(frozen=True)
class ImageSet:
    """A labelled list of images with the class names their labels index."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = field(default=())  # one "path: reason" per unusable file

    def counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


# Scanning decodes every file once, at a reduced JPEG scale: a truncated file still fails (the whole stream
# is read), but a 12-megapixel photo decodes about 8 times faster than at full size.
SCAN_DRAFT_SIZE = 64

CACHE_MODES = ("auto", "ram", "off")


def scan_image(path: str) -> str | None:
    """Check one file before training: None if it opens as an image, else why not (naming the file)."""
    try:
        _open_image(path, draft_size=SCAN_DRAFT_SIZE)
    except UnreadableImage as exc:
        return str(exc)
    return None


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
    import ctypes

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
    """Images decoded once, during the scan, and held in memory as decode_transforms leaves them (uint8 at the
    resize size, about 3 x 256 x 341 bytes for a 4:3 photo), so that no epoch opens a file again.

    Training then does only the random crop, flip and normalisation per image: large photos that take tens of
    milliseconds to decode cost nothing after the scan (docs/performance.md). The pixels are the very ones the
    uncached path produces, so a run is the same with or without the cache. The images sit in a few large
    uint8 blocks rather than one tensor each, so that loader processes share them (fork) or receive them
    (spawn) as a handful of shared-memory blocks.

    `auto` caches when the images fit in half the free memory (split between the processes of one machine)
    and otherwise gives up, at the image that passes that, and reads from the files as before; `ram` insists
    and stops with an error only when they would not fit in the free memory at all.
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
        self.fill = 0  # bytes used in the last block
        self.overflow: int | None = None  # set when auto gave up: how many images it held by then

    @property
    def accepting(self) -> bool:
        return self.overflow is None

    def load(self, path: str) -> torch.Tensor:
        """Decode one file as the cache holds it (raises UnreadableImage). Safe to call from threads."""
        return self.decode(_open_image(path, self.draft_size))

    def add(self, path: str, pixels: torch.Tensor) -> None:
        import torch

        if not self.accepting:
            return
        size = pixels.numel()
        if self.limit is not None and self.used + size > self.limit:
            if self.mode == "ram":
                from alexnet_cli.errors import ConfigError

                raise ConfigError(
                    f"--cache ram: the decoded images passed {_gib(self.limit)} after {len(self.entries)} images, "
                    f"and only {_gib(self.free or 0)} of memory is free; use --cache auto (cache when they fit) "
                    "or --cache off"
                )
            self.overflow = len(self.entries)
            self.blocks, self.entries, self.used, self.fill = [], {}, 0, 0
            return
        if not self.blocks or self.fill + size > self.blocks[-1].numel():
            self.blocks.append(torch.empty(max(self.BLOCK_BYTES, size), dtype=torch.uint8))
            self.fill = 0
        self.blocks[-1][self.fill:self.fill + size] = pixels.reshape(-1)
        self.entries[path] = (len(self.blocks) - 1, self.fill, tuple(pixels.shape))
        self.fill += size
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
        return (f"cache: not used, the decoded images passed the {_gib(self.limit or 0)} allowed ({allowed}) "
                f"after {self.overflow} images; each epoch decodes the files (--cache ram insists)")


def make_cache(mode: str, preprocess: Preprocess, local_processes: int = 1) -> ImageCache | None:
    return None if mode == "off" else ImageCache(preprocess, mode, local_processes)


def scan_threads() -> int:
    """Threads for the scan: Pillow decodes without holding the GIL, so they decode in parallel."""
    return max(1, min(8, os.cpu_count() or 1))


def find_classes(root: Path) -> list[str]:
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (give a folder with one subfolder per class)")
    classes = _visible_folders(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"{root} has no class subfolders: lay images out as {root}/<class>/<image>.jpg")
    return classes


def load_image_folder(root: str | Path, classes: Sequence[str] | None = None, strict: bool = False,
                      scan: bool = True, cache: ImageCache | None = None) -> ImageSet:
    """Read an ImageFolder tree (root/<class>/**/<image>). With `classes`, labels follow that order and every
    folder must be one of them (evaluation against a checkpoint's classes).

    With `scan`, every image is decoded once, up front: a bad file is found in seconds, not mid-epoch (a
    single pass, such as evaluation, skips the scan and lets the loader skip bad files as it meets them).
    Files that are not used are listed in `skipped` with the reason; with `strict`, the first one is an
    error instead. With a `cache`, the scan decodes each image as training will and keeps it there. The scan
    runs on a few threads; the result is in a fixed order whatever finishes first.
    """
    root = Path(root)
    found = find_classes(root)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{root} has classes the model does not know: {', '.join(unknown)} "
                f"(it knows {', '.join(classes)})"
            )
    index = {name: i for i, name in enumerate(classes)}
    candidates: list[tuple[str, int, str | None]] = []  # (path, label, why it is skipped before any decoding)
    for name in found:
        for directory, subdirs, files in os.walk(root / name, followlinks=True):
            subdirs[:] = _visible_folders(subdirs)
            for filename in sorted(files):
                path = os.path.join(directory, filename)
                if is_os_metadata(filename):
                    continue
                if filename.startswith("."):
                    reason = f"{path}: hidden file"
                elif not is_image_file(filename):
                    reason = f"{path}: not an image extension ({', '.join(IMAGE_EXTENSIONS)})"
                else:
                    reason = None
                candidates.append((path, index[name], reason))

    def check(candidate: tuple[str, int, str | None]):
        """(why the file is unusable or None, its decoded pixels when they go to the cache)."""
        path, _, reason = candidate
        if reason is not None or not scan:
            return reason, None
        if cache is not None and cache.accepting:
            try:
                return None, cache.load(path)
            except UnreadableImage as exc:
                return str(exc), None
        return scan_image(path), None

    samples: list[Sample] = []
    skipped: list[str] = []
    # Without a scan nothing is decoded here, so there is nothing to spread over threads.
    with _pillow_warnings(), ThreadPoolExecutor(scan_threads() if scan else 1) as pool:
        try:
            results = pool.map(check, candidates) if scan else map(check, candidates)
            for (path, label, _), (reason, pixels) in zip(candidates, results):
                if reason is None:
                    samples.append((path, label))
                    if pixels is not None:
                        cache.add(path, pixels)
                elif strict:
                    raise DataError(f"--strict: {reason}")
                else:
                    skipped.append(reason)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # stop now: the images still queued are not needed
            raise
    if not samples:
        raise DataError(f"no readable images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(root, tuple(classes), tuple(samples), tuple(skipped))


def find_sibling_validation(train_root: Path) -> Path | None:
    """`data/train` pairs with `data/val` (or `data/test`); other folder names pair with nothing."""
    if train_root.name.lower() not in ("train", "training"):
        return None
    for name in ("val", "valid", "validation", "test"):
        candidate = train_root.parent / name
        if candidate.is_dir():
            return candidate
    return None


def stratified_split(images: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out `fraction` of each class (at least one image of any class that has two or more)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in images.samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return (
        ImageSet(images.root, images.classes, tuple(sorted(train)), images.skipped),
        ImageSet(images.root, images.classes, tuple(sorted(val))),
    )


def split_from_file(images: ImageSet, split_file: Path) -> tuple[ImageSet, ImageSet]:
    """Re-create a saved split: the images listed as validation there are validation again."""
    try:
        held_out = set(json.loads(split_file.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the saved split {split_file}: {exc}") from None
    held_out = {str(path).replace("\\", "/") for path in held_out}  # written on Windows, read anywhere
    train = tuple(s for s in images.samples if _relative(s[0], images.root) not in held_out)
    val = tuple(s for s in images.samples if _relative(s[0], images.root) in held_out)
    return (
        ImageSet(images.root, images.classes, train, images.skipped),
        ImageSet(images.root, images.classes, val),
    )


def _relative(path: str, root: Path) -> str:
    """`path` from `root`, with `/` on every OS: what split.json stores."""
    return Path(os.path.relpath(path, root)).as_posix()


def split_record(val: ImageSet, fraction: float, seed: int) -> dict[str, Any]:
    return {
        "fraction": fraction,
        "seed": seed,
        "val": [_relative(path, val.root) for path, _ in val.samples],
    }


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files, folders (searched recursively, class subfolders or not) and globs -> (image paths, problems).

    A file named explicitly is kept whatever its extension; files found in folders or by globs must look
    like images. Order is stable: inputs in the order given, each folder's files sorted.
    """
    import glob

    found: list[str] = []
    problems: list[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found.append(item)
            continue
        if os.path.isdir(item):
            matches = [item]
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                problems.append(f"{item}: no such file, folder or match")
                continue
        before = len(found)
        for match in matches:
            if os.path.isdir(match):
                for directory, subdirs, files in os.walk(match, followlinks=True):
                    subdirs[:] = _visible_folders(subdirs)
                    found.extend(os.path.join(directory, f) for f in sorted(files) if is_image_file(f))
            elif is_image_file(match):
                found.append(match)
        if len(found) == before:
            problems.append(f"{item}: no images found")
    seen: set[str] = set()
    unique = [p for p in found if not (p in seen or seen.add(p))]
    return unique, problems
