"""runtime/files.py: atomic writes, and placing a file by link where the filesystem allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alexnet_cli.errors import OutputError
from alexnet_cli.runtime import files
from alexnet_cli.runtime.files import atomic_write, atomic_write_text, link_or_copy, publish_copy


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "metrics.csv"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n" and oct(target.stat().st_mode & 0o777) == "0o644"

    def fails(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="could not write .*metrics.csv: No space left on device"):
        atomic_write(target, fails)
    assert target.read_text() == "one\n" and os.listdir(target.parent) == ["metrics.csv"]  # no temp file left


def test_a_write_that_need_not_be_durable_skips_the_fsyncs(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd))
    atomic_write(tmp_path / "a.png", lambda file: file.write(b"png"), durable=False)
    assert synced == [] and (tmp_path / "a.png").read_bytes() == b"png"
    atomic_write(tmp_path / "b.pt", lambda file: file.write(b"pt"))
    assert len(synced) == 2  # the file, then its folder's entry


def test_link_or_copy_falls_back_from_hard_link_to_symbolic_link_to_copy(tmp_path, monkeypatch):
    source = tmp_path / "image.jpg"
    source.write_bytes(b"jpeg")
    assert link_or_copy(source, tmp_path / "linked.jpg") == "hard link"
    assert os.stat(tmp_path / "linked.jpg").st_ino == os.stat(source).st_ino
    assert link_or_copy(source, tmp_path / "linked.jpg") == "present"

    def no_hard_links(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "link", no_hard_links)
    assert link_or_copy(source, tmp_path / "symbolic.jpg") == "symbolic link"
    assert (tmp_path / "symbolic.jpg").is_symlink()
    monkeypatch.setattr(Path, "symlink_to", lambda self, target: no_hard_links())
    assert link_or_copy(source, tmp_path / "copied.jpg") == "copy"
    assert (tmp_path / "copied.jpg").read_bytes() == b"jpeg" and not (tmp_path / "copied.jpg").is_symlink()
    # A snapshot is never a symbolic link: that would follow the source's next version.
    publish_copy(source, tmp_path / "best.jpg")
    assert not (tmp_path / "best.jpg").is_symlink() and (tmp_path / "best.jpg").read_bytes() == b"jpeg"


def test_a_place_that_cannot_hold_the_file_is_an_output_error(tmp_path):
    """The folder cannot be made (a file is in the way): OutputError, which callers that may fail quietly (the
    bf16 measurement's cache) catch, not a bare OSError."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="could not write .*afile/sub/x.json"):
        atomic_write_text(tmp_path / "afile" / "sub" / "x.json", "{}")
