"""How many pieces an upload's structure holds, counted before Pillow opens it.

Pillow reads the structure of a JPEG (its marker segments), a PNG (its chunks), a GIF (its extension blocks),
a TIFF (the entries of its first directory) and a PPM header (a byte at a time) in Python, holding the GIL, at
about 1 to 5 us a piece. An upload made of millions of empty pieces costs seconds of CPU per megabyte sent,
during which the server's other threads, its event loop among them, barely run: 1 MB of empty PNG chunks took
0.46 s, a JPEG of 200,000 empty comments 0.34 s, a PPM header of a 1 MB comment 0.47 s, on the 2-core EPYC.
A real image has a few dozen pieces, or one a kilobyte or more (a PNG's IDAT chunks are 8 KB or larger).

So an upload may hold PIECES_FREE pieces, and one more for every BYTES_PER_PIECE of its size: the walk here
stops as soon as it has seen more, so its own cost is bounded too. A JPEG may hold at most MAX_JPEG_SCANS
scans, each a pass of the decoder (in C) over the whole image. Where the structure is malformed, the walk
stops and Pillow decides.
"""

from __future__ import annotations

import re

PIECES_FREE = 1024
BYTES_PER_PIECE = 1024
# nvImageCodec's default, after the cure53 audit of libjpeg-turbo. A scan can be repeated in 12 bytes: a JPEG
# of 264 kB, 2000x2000 pixels and 20,000 scans took 2.2 s of CPU to decode. A progressive JPEG has about 10.
MAX_JPEG_SCANS = 256
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length: TEM, RST0-7
PPM_HEAD_BYTES = 4096
# A PPM header: its magic, then width, height and (but for bitmaps) the largest value, between whitespace and
# comments, and one byte of whitespace before the raster.
_GAP = rb"(?:\s|#[^\r\n]*[\r\n])+"
PPM_HEADER = re.compile(rb"P[1-7]" + _GAP + rb"\d+" + _GAP + rb"\d+(?:" + _GAP + rb"\d+)?\s")


def structure_problem(data: bytes) -> str | None:
    """Why the upload's structure would cost more to read than its size warrants, or None."""
    allowed = PIECES_FREE + len(data) // BYTES_PER_PIECE
    if data.startswith(b"\xff\xd8"):
        scans = data.count(b"\xff\xda")  # 0xFF in the coded data is sent as 0xFF00: these are markers
        if scans > MAX_JPEG_SCANS:
            return (f"a JPEG of {scans:,} scans, over the limit of {MAX_JPEG_SCANS} (a progressive JPEG has about "
                    "10, and each costs a pass over the whole image)")
        pieces, kind = _jpeg_segments(data, allowed), "marker segments and stray bytes before its image data"
    elif data.startswith(PNG_SIGNATURE):
        pieces, kind = _png_chunks(data, allowed), "chunks"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        pieces, kind = _gif_blocks(data, allowed), "blocks before its first image"
    elif data[:4] in (b"II*\0", b"MM\0*"):
        pieces, kind = _tiff_entries(data), "entries in its first directory"
    elif data[:1] == b"P" and data[1:2] in b"1234567" and len(data) > 2:
        if PPM_HEADER.match(data[:PPM_HEAD_BYTES]) is None and len(data) > PPM_HEAD_BYTES:
            return f"a PPM header of more than {PPM_HEAD_BYTES:,} bytes (Pillow reads it a byte at a time)"
        return None
    else:
        return None
    if pieces > allowed:
        return (f"over {allowed:,} {kind} in {len(data):,} bytes (Pillow reads each in Python: at most "
                f"{PIECES_FREE:,}, and one more for every {BYTES_PER_PIECE:,} bytes)")
    return None


def _jpeg_segments(data: bytes, allowed: int) -> int:
    """Marker segments, fill bytes and stray bytes up to the first scan (Pillow reads a stray byte at a time)."""
    pieces, position = 0, 2
    while position + 4 <= len(data) and pieces <= allowed:
        if data[position] != 0xFF:
            following = data.find(b"\xff", position)
            following = len(data) if following < 0 else following
            pieces += following - position
            position = following
            continue
        marker = data[position + 1]
        pieces += 1
        if marker == 0xFF:
            position += 1
        elif marker == 0xDA:
            break
        elif marker in JPEG_STANDALONE:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return pieces


def _png_chunks(data: bytes, allowed: int) -> int:
    pieces, position = 0, len(PNG_SIGNATURE)
    while position + 8 <= len(data) and pieces <= allowed:
        pieces += 1
        if data[position + 4:position + 8] == b"IEND":
            break
        position += 12 + int.from_bytes(data[position:position + 4], "big")
    return pieces


def _gif_blocks(data: bytes, allowed: int) -> int:
    """Extension blocks and their sub-blocks up to the first image descriptor (whose data is read in C)."""
    flags = data[10] if len(data) > 10 else 0
    position = 13 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)  # the header and its colour table
    pieces = 0
    while position < len(data) and pieces <= allowed:
        if data[position:position + 1] != b"!":  # an image, the trailer, or something Pillow will refuse
            break
        position += 2  # the introducer and the label
        while position < len(data) and pieces <= allowed:
            size = data[position]
            pieces += 1
            position += 1 + size
            if size == 0:
                break
    return pieces


def _tiff_entries(data: bytes) -> int:
    little = data[:2] == b"II"
    offset = int.from_bytes(data[4:8], "little" if little else "big")
    return int.from_bytes(data[offset:offset + 2], "little" if little else "big") if offset + 2 <= len(data) else 0
