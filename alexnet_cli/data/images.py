"""Decoding: how one file becomes an RGB image, or an UnreadableImage naming the file and why.

Every reader of pixels (the index's checks, the cache, the loaders, predict) opens files here, so a damaged
file is named the same way wherever it is met.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet_cli.data.structure import structure_problem
from alexnet_cli.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

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


def visible_folders(names) -> list[str]:
    return sorted(name for name in names if not name.startswith(".") and not is_os_metadata(name))


def first_visit(folder: str, seen: set[tuple[int, int]]) -> bool:
    """Whether a walk that has seen the folders in `seen` (by device and inode, so through any link) should
    enter `folder`; it is added. A folder that cannot be stat'ed is entered, to be passed over as before."""
    try:
        identity = os.stat(folder)
    except OSError:
        return True
    key = (identity.st_dev, identity.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(image):
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float greys scaled, CMYK converted."""
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
def pillow_warnings():
    """Pillow's warnings while images open: a decompression bomb is an error, notes on damaged metadata are
    hidden (the file is judged by whether it decodes). Warning filters are process-wide, so a parallel scan
    enters this once around all its threads rather than once per image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def open_image_in_scope(path: str | Path | BinaryIO, draft_size: int | None, name: str | None = None,
                        formats: tuple[str, ...] | None = None, check=None) -> Image.Image:
    """open_image, inside pillow_warnings(). `name` is what a message calls the image (its path by default);
    `formats` limits the formats Pillow tries (every format it knows by default). `check(width, height)`, if
    given, may refuse the image from its header (raising UnreadableImage), after the JPEG draft and before a
    pixel is decoded."""
    name = name or str(path)
    try:
        with Image.open(path, formats=formats) as image:
            # Refuse at Pillow's limit itself, and without relying on the warning filters, which another
            # thread could be changing.
            if image.width * image.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombWarning(
                    f"{image.width}x{image.height} pixels is over the limit of {Image.MAX_IMAGE_PIXELS}")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            if check is not None:
                check(image.width, image.height)
            image.load()  # decode now: a truncated file fails here, not later in a transform
            return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombWarning as exc:
        raise UnreadableImage(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, EOFError,
            ZeroDivisionError, Image.DecompressionBombError) as exc:
        # Pillow's decoders report damaged files through many exception types; none of them is our bug.
        reason = str(exc) or exc.__class__.__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not an image (no image format recognised)"
        if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and os.path.getsize(path) == 0:
            reason = "empty file"
        raise UnreadableImage(f"{name}: {reason}") from None


def open_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open one image as RGB with its EXIF orientation applied, or raise UnreadableImage naming it.

    Every failure a file can cause (empty, truncated, not an image, a decompression bomb) becomes
    UnreadableImage, so callers can skip the file and carry on. `draft_size` lets a large JPEG decode at a
    reduced scale (DCT scaling) that is still at least that many pixels on each side.
    """
    with pillow_warnings():
        return open_image_in_scope(path, draft_size)


# What a server takes from strangers: the raster formats of IMAGE_EXTENSIONS (a phone's MPO opens as JPEG).
# Not every format Pillow knows: EPS, for one, would hand the bytes to Ghostscript where it is installed.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# An image far longer than it is wide is resized on its short side to the model's input: 1 x 80,000,000
# pixels (under Pillow's bomb limit) would become gigabytes. Past this ratio an upload is refused.
MAX_ASPECT_RATIO = 50


class LargeUpload(Exception):
    """An upload that decodes to more than open_upload's `large_above` pixels: not refused, but for a decoder
    of its own (serve's lane for large images)."""

    def __init__(self, pixels: int) -> None:
        super().__init__(f"{pixels:,} pixels to decode")
        self.pixels = pixels


def open_upload(data: bytes, draft_size: int | None = None, max_pixels: int | None = None,
                large_above: int | None = None) -> Image.Image:
    """Bytes sent over the network, opened as open_image opens a file (inside pillow_warnings()), in the
    UPLOAD_FORMATS alone; a message calls them "the upload". Nothing about them is ever used as a path. The
    shape and `max_pixels` (the pixels decoded: a JPEG's after its draft) are checked from the header, before
    the decode that they bound; past `large_above` pixels, LargeUpload is raised from the header too. An upload
    whose structure would cost Pillow more to read than its size warrants (structure.py) is refused before it
    is opened."""
    if not data:
        raise UnreadableImage("the upload: empty file")
    problem = structure_problem(data)
    if problem is not None:
        raise UnreadableImage(f"the upload: {problem}")

    def check(width: int, height: int) -> None:
        if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
            raise UnreadableImage(f"the upload: {width}x{height} pixels, one side over {MAX_ASPECT_RATIO} times "
                                  "the other")
        if max_pixels is not None and width * height > max_pixels:
            raise UnreadableImage(f"the upload: {width}x{height} pixels to decode, over the server's limit of "
                                  f"{max_pixels:,} (--max-pixels)")
        if large_above is not None and width * height > large_above:
            raise LargeUpload(width * height)

    return open_image_in_scope(io.BytesIO(data), draft_size, name="the upload", formats=UPLOAD_FORMATS, check=check)


def scan_threads() -> int:
    """Threads for checking or decoding many files: Pillow reads and decodes without holding the GIL."""
    return max(1, min(8, os.cpu_count() or 1))


