"""The structure of an upload, counted before Pillow reads it in Python: a real image of each format passes,
and one made of a million empty pieces is refused in milliseconds, where Pillow would take a second a MB."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image

from alexnet_cli.data.structure import structure_problem


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 1 if mode == "P" else (20, 120, 220)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("fmt, mode, options", [
    ("JPEG", "RGB", {}), ("JPEG", "RGB", {"progressive": True}), ("PNG", "RGB", {}), ("PNG", "RGBA", {}),
    ("GIF", "P", {}), ("WEBP", "RGB", {}), ("BMP", "RGB", {}), ("TIFF", "RGB", {}), ("PPM", "RGB", {}),
])
def test_a_real_image_of_each_format_passes(fmt, mode, options):
    assert structure_problem(_encoded(fmt, mode, **options)) is None
    assert structure_problem(b"P6\n# a comment\n64 48\n255\n" + bytes(64 * 48 * 3)) is None


def _bombs() -> dict[str, bytes]:
    jpeg, png, gif = _encoded("JPEG"), _encoded("PNG"), _encoded("GIF", "P")
    image = gif.index(b",")
    return {
        "JPEG comments": jpeg[:2] + b"\xff\xfe\x00\x02" * 200_000 + jpeg[2:],
        "JPEG stray bytes": jpeg[:20] + bytes(1_000_000) + jpeg[20:],
        "PNG chunks": png[:33] + _chunk(b"abCd") * 100_000 + png[33:],
        "GIF sub-blocks": gif[:image] + b"!\xfe" + b"\x01a" * 500_000 + b"\x00" + gif[image:],
        "PPM comment": b"P6\n#" + b"a" * 1_000_000 + b"\n64 48\n255\n" + bytes(64 * 48 * 3),
    }


@pytest.mark.parametrize("name", list(_bombs()))
def test_a_million_empty_pieces_are_refused_in_milliseconds(name):
    """Each of these took Pillow 0.2 to 0.5 s of CPU (holding the GIL) for a megabyte; the count stops at its
    allowance, so it costs milliseconds however large the upload."""
    data = _bombs()[name]
    started = time.perf_counter()
    problem = structure_problem(data)
    assert problem is not None and time.perf_counter() - started < 0.05
    assert "Pillow reads" in problem


def test_a_tiff_directory_of_65535_entries_is_refused():
    tiff = _encoded("TIFF")
    bomb = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 65535) + bytes(12 * 65535) + tiff[8:]
    assert "entries in its first directory" in (structure_problem(bomb) or "")
