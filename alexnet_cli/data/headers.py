"""What a file's first and last bytes say: its format and size, and whether it ends as a whole JPEG or PNG
does. The folder index (index.py) checks every file with check_file once."""

from __future__ import annotations

import os
import zlib

from PIL import Image

from alexnet_cli.data.images import UnreadableImage, open_image_in_scope

# The last bytes of a whole file: JPEG's end-of-image marker, PNG's IEND chunk (its length, type and CRC).
JPEG_END = b"\xff\xd9"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# A file whose end marker is missing (or of another format) is decoded to decide, at this reduced scale: a
# truncated file still fails, but a 12-megapixel JPEG decodes about 8 times faster than at full size.
DECODE_DRAFT_SIZE = 64


def check_file(path: str) -> tuple[int, int]:
    """The (width, height) of a usable image, from its header; raises UnreadableImage naming the file and why.

    Cheap, but it catches what breaks training: an empty or unrecognised file, a declared size over the
    decompression-bomb limit, and a truncated JPEG or PNG (its end marker missing). A file that fails that
    last test, or of a format with no such marker, is decoded (at a reduced scale) to decide: some cameras
    write bytes after a JPEG's end, and those files decode.

    JPEG and PNG headers are read here from the file's first bytes (header_size), without Pillow's
    Image.open, which reads the rest of a JPEG's header and builds an image object: several times faster
    (docs/scale.md has the rates). Anything header_size cannot place goes to Pillow.
    """
    limit = Image.MAX_IMAGE_PIXELS
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        found = header_size(head)
        if found is None:
            return _check_with_pillow(path, handle, limit)
        image_format, width, height = found
        if limit and width * height > limit:
            raise UnreadableImage(f"{path}: refused as a possible decompression bomb ({width}x{height} pixels "
                                  f"is over the limit of {limit})")
        marker = JPEG_END if image_format == "JPEG" else PNG_END
        if len(head) < HEAD_BYTES:  # the whole file is in hand
            tail = head[-len(marker):]
        else:
            handle.seek(-len(marker), os.SEEK_END)
            tail = handle.read()
    if tail != marker:
        open_image_in_scope(path, DECODE_DRAFT_SIZE)
    return width, height


# What check_file reads first: a JPEG's header (with its EXIF block) fits in it, and so does a whole small file.
HEAD_BYTES = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG's start-of-frame markers (baseline, progressive, lossless, arithmetic): each holds the image's size.
JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def header_size(head: bytes) -> tuple[str, int, int] | None:
    """("JPEG" or "PNG", width, height) from a file's first bytes, or None where they do not say (another
    format, a header longer than `head`, or a malformed one: Pillow then decides)."""
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) >= 33:
        if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
            return None
        return "PNG", int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(head):  # marker segments: FF, the marker, a 2-byte length that counts itself
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_FRAMES:
            if position + 9 > len(head):
                return None
            height = int.from_bytes(head[position + 5:position + 7], "big")
            width = int.from_bytes(head[position + 7:position + 9], "big")
            return ("JPEG", width, height) if width and height else None
        if marker == 0xDA:  # the scan began before any frame header
            return None
        position += 2 + int.from_bytes(head[position + 2:position + 4], "big")
    return None


def _check_with_pillow(path: str, handle, limit: int | None) -> tuple[int, int]:
    """check_file for what header_size cannot place: Pillow opens it, and a JPEG's or PNG's end is checked."""
    handle.seek(0)
    try:
        image = Image.open(handle)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # Pillow's own check, as it reads the header: over the limit warns (an error here), over twice the
        # limit raises.
        raise UnreadableImage(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except Exception:
        open_image_in_scope(path, DECODE_DRAFT_SIZE)
        raise UnreadableImage(f"{path}: not an image (no image format recognised)") from None
    with image:
        width, height = image.size
        if limit and width * height > limit:
            raise UnreadableImage(f"{path}: refused as a possible decompression bomb ({width}x{height} pixels "
                                  f"is over the limit of {limit})")
        image_format = image.format
    marker = {"JPEG": JPEG_END, "PNG": PNG_END}.get(image_format or "")
    if marker is not None:
        handle.seek(0, os.SEEK_END)
        if handle.tell() >= len(marker):
            handle.seek(-len(marker), os.SEEK_END)
            if handle.read() == marker:
                return width, height
    open_image_in_scope(path, DECODE_DRAFT_SIZE)
    return width, height
