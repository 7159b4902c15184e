"""Files written so that a crash, a kill or a full disk at any moment leaves the previous version whole: the one
atomic write (a temp file in the same folder, fsync, os.replace), the atomic snapshot of one file as another,
and placing a file by link where the filesystem allows. Every module that writes a file a user keeps (a
checkpoint, metrics.csv, config.json, a picture, an export, the folder index, the bf16 measurement) writes
it through here."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from alexnet_cli.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object],
                 written: Callable[[], None] | None = None, *, durable: bool = True) -> None:
    """Write through `write(file)` to a temp file in the same folder, fsync, then os.replace. `written()`,
    if given, is called once `write` has returned, before the fsync.

    A crash or a full disk at any point leaves the previous file at `path` untouched. `durable=False` leaves
    out the two fsyncs, for what is made again if the machine loses power (a data set's many small files, the
    folder index): the rename alone still means that no file is ever seen half-written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only place, a file in the way: the caller's OutputError, as a write's
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
    try:
        # mkstemp makes the file private (0600); give it the mode of the file it replaces, or the usual 0644.
        # Windows has no os.fchmod before Python 3.13, and its modes are only a read-only flag: leave it be.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            if written is not None:
                written()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
        raise
    if not durable or os.name == "nt":  # Windows cannot open a folder to fsync it; NTFS journals the rename
        return
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def check_writable(path: str | Path, what: str, *, is_file: bool = False) -> None:
    """OutputError, naming `what`, unless files can be made in the folder `path` (made later if missing), or
    with `is_file`, the file `path` can be written in its folder:
    said before any data work, so that a read-only place fails in a second rather than after the index,
    the cache and the model. The nearest folder that exists must be a writable folder on a writable
    filesystem."""
    path = Path(path)
    existing = (path.parent if is_file else path).absolute()
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what} {path}: {existing} is {'a file' if existing.exists() else 'missing'}, "
                          "not a folder")
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1))
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if read_only else "is not writable by this user"
        raise OutputError(f"cannot write {what} {path}: {existing} {why} (choose another place, or run from a "
                          "folder you can write)")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# Windows refuses to replace a file that another program holds open (`alexnet predict` reading best.pt,
# an antivirus scan): try again for about two seconds before giving up.
PUBLISH_ATTEMPTS = 8
PUBLISH_WAIT = 0.25


def publish_copy(source: str | Path, target: str | Path) -> None:
    """Make `target` an atomic snapshot of `source` (best.pt from last.pt) without writing the bytes twice.

    A hard link shares the file until `source` is next replaced: os.replace gives `source` a new inode and
    leaves `target` holding the old one, which is exactly the snapshot wanted. Where links are not
    supported, the file is copied beside the target and renamed over it. A target held open elsewhere
    (PermissionError on Windows, whose NTFS has hard links) is tried again; OutputError if it stays so,
    or if the copy fails, with the previous target left as it was.
    """
    source, target = Path(source), Path(target)
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            _publish_once(source, target)
            return
        except PermissionError as exc:
            if attempt + 1 == PUBLISH_ATTEMPTS:
                raise OutputError(f"could not replace {target}: {exc.strerror or exc} (is another program "
                                      "holding it open?)") from None
            time.sleep(PUBLISH_WAIT)


def _publish_once(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)  # what a killed run left
    try:
        link_or_copy(source, tmp, symbolic=False)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, PermissionError):  # a full disk, say
            raise OutputError(f"could not write {target}: {exc.strerror or exc}") from None
        raise


def link_or_copy(source: Path, target: Path, *, symbolic: bool = True) -> str:
    """Place `source` at `target` without a second copy of its bytes where the filesystem allows: a hard link,
    else (with `symbolic`) a symbolic link, else a copy. Returns which it made, or "present" when `target`
    exists already."""
    if target.exists():
        return "present"
    try:
        os.link(source, target)
        return "hard link"
    except OSError:  # no hard links here (FAT, some network shares, another filesystem)
        pass
    if symbolic:
        try:
            target.symlink_to(Path(source).resolve())
            return "symbolic link"
        except OSError:
            pass
    shutil.copy2(source, target)
    return "copy"
