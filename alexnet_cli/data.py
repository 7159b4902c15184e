"""Data: safe image opening, class discovery, validation splits, transforms and loaders.

Everything here works on plain paths and (path, label) lists, so that train, evaluate and predict share it.
"""

from __future__ import annotations

import json
import os
import random
import struct
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet_cli.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

    from alexnet_cli.cache import ImageCache

# Matched case-insensitively, so IMG_0001.JPG counts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

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


def open_image_in_scope(path: str | Path, draft_size: int | None) -> Image.Image:
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
        return open_image_in_scope(path, draft_size)


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

def scan_image(path: str) -> str | None:
    """Check one file before training: None if it opens as an image, else why not (naming the file)."""
    try:
        open_image_in_scope(path, draft_size=SCAN_DRAFT_SIZE)
    except UnreadableImage as exc:
        return str(exc)
    return None


def median_short_side(paths: Sequence[str], limit: int = 200) -> int | None:
    """The median short side, in pixels, of up to `limit` of the images (evenly spread), read from their
    headers alone; None when none of them opens."""
    from PIL import Image

    sides = []
    for path in list(paths)[::max(1, len(paths) // limit)][:limit]:
        try:
            with _pillow_warnings(), Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # noqa: BLE001 - the scan names unreadable files; here they only do not count
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


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


def _candidates(root: Path, found: Sequence[str], index: dict[str, int]) -> list[tuple[str, int, str | None]]:
    """Every file under the class folders, in a fixed order: (path, label, why it is skipped before any
    decoding, or None). OS metadata is left out without a word."""
    candidates = []
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
    return candidates


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
    candidates = _candidates(root, found, {name: i for i, name in enumerate(classes)})

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
