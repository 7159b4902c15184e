"""The index of an image folder: every file's class, size, mtime, header size and whether it is usable,
kept in the user's cache folder so that only the first run opens every file.

The first run lists the tree and checks each image cheaply (docs/scale.md): its header (a known format, and a
declared size under Pillow's decompression-bomb limit) and, for JPEG and PNG, the end marker that a
truncated file lacks; a file whose end marker is missing, or of another format, is decoded to decide. Later
runs list the tree again (names, sizes and mtimes: one stat per file, no open) and check only the files that
are new or whose size or mtime changed. A full decode of every file stays with `alexnet check` and
`--strict`.

The index lives in `user_cache_dir()/index/`, never in the data folder (shared data sets are often
read-only), one file per folder, named after the folder and a hash of its resolved path. It holds tensors and
plain values, written atomically and read with `torch.load(weights_only=True)`. Under torchrun, local rank 0
of each node builds it while the other ranks wait on a barrier, then read it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import warnings
from array import array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from alexnet_cli.data.headers import check_file
from alexnet_cli.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    first_visit,
    is_os_metadata,
    pillow_warnings,
    visible_folders,
)
from alexnet_cli.data.samples import Strings, StringsBuilder
from alexnet_cli.errors import AlexNetError
from alexnet_cli.observer import Progress, no_progress
from alexnet_cli.runtime.files import atomic_write
from alexnet_cli.runtime.system import user_cache_dir

FORMAT = "alexnet-cli folder index"
VERSION = 1

# How files are checked. A first index of files that are not in the page cache waits on the disk, and many
# reads in flight (CHECK_THREADS) go many times faster than one. From the page cache, one thread is faster
# than many, which queue for Python's lock (docs/scale.md has the rates). So the first PROBE files tell which
# it is: at FROM_MEMORY files/s or more the rest go on in one thread, else on CHECK_THREADS.
PROBE = 256
FROM_MEMORY = 5_000
CHECK_THREADS = 64
CHUNK = 64
NO_FINGERPRINT = [0, 0, 0]  # what ranks that wait for the index send in its place


@dataclass(frozen=True)
class Listing:
    """What one walk of the tree finds, before any file is opened; OS metadata is left out without a word."""

    names: Strings  # each file's path under the root, in a fixed order (class folders sorted, then os.walk's)
    folder: torch.Tensor  # int32: the file's class folder, as a position in the folders walked
    size: torch.Tensor  # int64 bytes
    mtime_ns: torch.Tensor  # int64
    excluded: dict[int, str]  # position -> why it is not opened at all (hidden, not an image extension, no stat)


def walk(root: Path, folders: Sequence[str], stat: bool = True) -> Listing:
    """Every file under `root/<folder>` for each of `folders`, as os.walk with sorted names visits them (each
    folder's files, then its visible subfolders), with one stat per file when `stat`. Links to folders are
    followed, each folder once: a symlink cycle is walked once, and a link into a folder already walked adds
    nothing."""
    names, folder, size, mtime = StringsBuilder(), array("i"), array("q"), array("q")
    excluded: dict[int, str] = {}
    root_text = str(root)
    seen: set[tuple[int, int]] = set()  # each folder once: a link back up the tree (a cycle) is not followed again

    def visit(directory: str, relative: str, label: int) -> None:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            return  # as os.walk: a folder that cannot be listed is passed over
        subfolders = []
        prefix = relative + os.sep
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # follows links, as os.walk(followlinks=True)
            except OSError:
                is_folder = False
            base = entry.name
            if is_folder:
                subfolders.append(base)
                continue
            # The common case first, in as few steps as a million files allow: a visible file with an image
            # extension (no OS metadata file has one; `._photo.jpg` starts with a dot).
            usable = base[0] != "." and base.lower().endswith(IMAGE_EXTENSIONS)
            if not usable and is_os_metadata(base):
                continue
            position = len(names)
            names.append(prefix + base)
            folder.append(label)
            file_size = file_mtime = 0
            if not usable:
                excluded[position] = "hidden file" if base.startswith(".") else \
                    f"not an image extension ({', '.join(IMAGE_EXTENSIONS)})"
            elif stat:
                try:
                    status = entry.stat()
                    file_size, file_mtime = status.st_size, status.st_mtime_ns
                except OSError as exc:
                    excluded[position] = exc.strerror or type(exc).__name__
            size.append(file_size)
            mtime.append(file_mtime)
        for name in visible_folders(subfolders):
            if first_visit(os.path.join(directory, name), seen):
                visit(os.path.join(directory, name), os.path.join(relative, name), label)

    for top in (root_text, *(os.path.join(root_text, name) for name in folders)):  # each walked as itself alone
        first_visit(top, seen)
    for label, name in enumerate(folders):
        visit(os.path.join(root_text, name), name, label)

    def as_tensor(values: array, dtype: torch.dtype) -> torch.Tensor:
        return torch.frombuffer(values, dtype=dtype).clone() if len(values) else torch.empty(0, dtype=dtype)

    return Listing(names.finish(), as_tensor(folder, torch.int32), as_tensor(size, torch.long),
                   as_tensor(mtime, torch.long), excluded)


@dataclass(frozen=True)
class FolderIndex:
    """One folder's index: the listing, and for each file its header size or why it cannot be used."""

    root: str  # the resolved path it describes
    folders: tuple[str, ...]  # the class folders, in the order `listing.folder` counts them
    listing: Listing
    width: torch.Tensor  # int32, 0 for an unusable file
    height: torch.Tensor
    problem: torch.Tensor  # int32: -1 for a usable file, else a position in `problems`
    problems: tuple[str, ...]  # why each unusable file is unusable (without its path)

    def fingerprint(self) -> list[int]:
        """Three integers that tell this index from another of the same folder: files, bytes, and a sum of
        their mtimes (wrapping around)."""
        listing = self.listing
        return [len(listing.names), int(listing.size.sum()), int(listing.mtime_ns.sum())]

    def usable(self) -> torch.Tensor:
        return self.problem < 0

    def reasons(self, root: str) -> list[str]:
        """'path: why' for every unusable file, in the listing's order."""
        positions = (self.problem >= 0).nonzero().flatten().tolist()
        return [f"{os.path.join(root, self.listing.names[i])}: {self.problems[int(self.problem[i])]}"
                for i in positions]

    def to_dict(self) -> dict[str, Any]:
        listing = self.listing
        return {"format": FORMAT, "version": VERSION, "settings": settings(), "root": self.root,
                "folders": list(self.folders), "names": listing.names.buffer, "offsets": listing.names.offsets,
                "folder": listing.folder, "size": listing.size, "mtime_ns": listing.mtime_ns,
                "width": self.width, "height": self.height, "problem": self.problem, "problems": list(self.problems)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: str) -> FolderIndex | None:
        """The index in `data`, or None when it is not one for `root` under today's settings, or is damaged
        (then it is built again: it only ever saves time)."""
        try:
            if (data.get("format"), data.get("version"), data.get("settings"), data.get("root")) != (
                    FORMAT, VERSION, settings(), root):
                return None
            names = Strings(data["names"], data["offsets"])
            n = len(names)
            tensors = [data[key] for key in ("folder", "size", "mtime_ns", "width", "height", "problem")]
            problems = tuple(str(reason) for reason in data["problems"])
            folders = tuple(str(name) for name in data["folders"])
            if names.buffer.dtype != torch.uint8 or any(t.shape != (n,) for t in tensors) or (n and (
                    int(names.offsets[0]) != 0 or int(names.offsets[-1]) != names.buffer.numel()
                    or bool((names.offsets[1:] < names.offsets[:-1]).any())
                    or int(tensors[0].min()) < 0 or int(tensors[0].max()) >= len(folders)
                    or int(tensors[5].max()) >= len(problems))):
                return None
        except (KeyError, TypeError, AttributeError, IndexError, RuntimeError, ValueError):
            return None
        folder, size, mtime_ns, width, height, problem = tensors
        return cls(root, folders, Listing(names, folder, size, mtime_ns, {}), width, height, problem, problems)


def settings() -> dict[str, Any]:
    """What a file's verdict depends on besides the file: a change to these checks every file again."""
    return {"max_pixels": Image.MAX_IMAGE_PIXELS, "extensions": list(IMAGE_EXTENSIONS)}


def index_file(root: str) -> Path:
    """Where the index of `root` (a resolved path) is kept: the user's cache folder, never the data folder."""
    digest = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(root).name)[:40] or "root"
    return user_cache_dir() / "index" / f"{label}-{digest}.pt"


def read_index(root: str) -> FolderIndex | None:

    path = index_file(root)
    try:
        with warnings.catch_warnings():  # a damaged file is built again: torch's notes on it are not news
            warnings.simplefilter("ignore")
            data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        return None  # damaged or hostile: built again
    return FolderIndex.from_dict(data, root) if isinstance(data, dict) else None


def write_index(index: FolderIndex) -> str | None:
    """Save it atomically; None, or why it could not be saved (then the next run builds it again)."""
    path = index_file(index.root)
    try:
        # A cache: one lost to a power cut is built again, so it is renamed into place without an fsync.
        atomic_write(path, lambda file: torch.save(index.to_dict(), file), durable=False)
    except OSError as exc:  # the cache folder itself could not be made
        return f"{path.parent}: {exc.strerror or exc}"
    except AlexNetError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class IndexReport:
    index: FolderIndex
    checked: int  # files opened now
    reused: int  # files whose verdict came from the saved index
    seconds: float
    saved: str | None  # None, or why the index could not be saved

    def describe(self) -> str:
        files = len(self.index.listing.names)
        if self.checked == 0:
            return f"index: {files:,} files, unchanged since the last run (none opened)"
        rate = f", {self.checked / self.seconds:,.0f} files/s" if self.seconds > 0 else ""
        line = (f"index: {files:,} files, {self.checked:,} checked in {self.seconds:.1f} s{rate}"
                + (f", {self.reused:,} unchanged" if self.reused else ""))
        where = f"kept in {index_file(self.index.root)}" if self.saved is None else f"not saved ({self.saved})"
        return f"{line}; {where}"


def build_index(root: Path, folders: Sequence[str], progress: Progress = no_progress) -> IndexReport:
    """The index of `root`: the saved one where files are unchanged, with new and changed files checked now,
    and saved again when anything changed."""
    started = time.perf_counter()
    resolved = os.path.realpath(root)
    listing = walk(root, folders)
    n = len(listing.names)
    saved = read_index(resolved)
    width = torch.zeros(n, dtype=torch.int32)
    height = torch.zeros(n, dtype=torch.int32)
    problem = torch.full((n,), -1, dtype=torch.int32)
    problems: list[str] = []
    reasons: dict[str, int] = {}

    def note(position: int, reason: str) -> None:
        problem[position] = reasons.setdefault(reason, len(reasons))
        if len(reasons) > len(problems):
            problems.append(reason)

    known = torch.zeros(n, dtype=torch.bool)
    if saved is not None:
        known, where = _unchanged(saved, listing)
        positions = known.nonzero().flatten()
        old = where[positions]
        width[positions], height[positions] = saved.width[old], saved.height[old]
        bad = saved.problem[old] >= 0  # the few unusable files: their reasons carried over one by one
        for position, old_problem in zip(positions[bad].tolist(), saved.problem[old][bad].tolist()):
            note(position, saved.problems[old_problem])
    for position, reason in listing.excluded.items():
        known[position] = True
        note(position, reason)
    pending = (~known).nonzero().flatten().tolist()
    if pending:
        paths = [os.path.join(str(root), listing.names[i]) for i in pending]
        with pillow_warnings(), progress(f"indexing {root}", len(pending)) as advance:
            verdicts = _verdicts(paths, advance)
        sizes = [(position, result) for position, result in zip(pending, verdicts) if not isinstance(result, str)]
        if sizes:
            where = torch.tensor([position for position, _ in sizes], dtype=torch.long)
            width[where] = torch.tensor([result[0] for _, result in sizes], dtype=torch.int32)
            height[where] = torch.tensor([result[1] for _, result in sizes], dtype=torch.int32)
        for position, result in zip(pending, verdicts):
            if isinstance(result, str):
                note(position, result)
    index = FolderIndex(resolved, tuple(folders), listing, width, height, problem, tuple(problems))
    changed = bool(pending) or saved is None or not saved.listing.names.equal(listing.names) \
        or saved.folders != index.folders or not torch.equal(saved.problem >= 0, problem >= 0)
    why_not_saved = write_index(index) if changed else None
    return IndexReport(index, len(pending), n - len(pending) - len(listing.excluded),
                       time.perf_counter() - started, why_not_saved)


def _verdicts(paths: list[str], advance) -> list[tuple[int, int] | str]:
    """Each file's verdict, in order. The first PROBE files are checked in this thread; if they came at least
    FROM_MEMORY files/s, they are in the page cache (or on a fast disk) and the rest follow in this thread too;
    else the rest are spread over CHECK_THREADS threads, to keep many reads in flight."""
    started = time.perf_counter()
    verdicts = [_verdict(path) for path in paths[:PROBE]]
    advance(len(verdicts))
    rest = paths[PROBE:]
    if not rest:
        return verdicts
    if len(verdicts) / max(time.perf_counter() - started, 1e-9) >= FROM_MEMORY:
        for start in range(0, len(rest), CHUNK):
            verdicts.extend(_verdict(path) for path in rest[start:start + CHUNK])
            advance(len(rest[start:start + CHUNK]))
        return verdicts
    chunks = [rest[start:start + CHUNK] for start in range(0, len(rest), CHUNK)]
    with ThreadPoolExecutor(min(CHECK_THREADS, len(chunks))) as pool:
        try:
            for chunk in pool.map(lambda chunk: [_verdict(path) for path in chunk], chunks):
                verdicts.extend(chunk)
                advance(len(chunk))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return verdicts


def _verdict(path: str) -> tuple[int, int] | str:
    try:
        return check_file(path)
    except UnreadableImage as exc:
        return str(exc).removeprefix(f"{path}: ")
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _unchanged(saved: FolderIndex, listing: Listing) -> tuple[torch.Tensor, torch.Tensor]:
    """Per file of `listing`: whether the saved index has it with the same size and mtime, and where."""
    if saved.listing.names.equal(listing.names):  # the usual case, compared without a string per file
        same = (saved.listing.size == listing.size) & (saved.listing.mtime_ns == listing.mtime_ns)
        return same, torch.arange(len(listing.names))
    old = {name: i for i, name in enumerate(saved.listing.names)}
    where = torch.tensor([old.get(name, -1) for name in listing.names], dtype=torch.long)
    found = where >= 0
    same = found.clone()
    same[found] = (saved.listing.size[where[found]] == listing.size[found]) & \
        (saved.listing.mtime_ns[where[found]] == listing.mtime_ns[found])
    return same, where

