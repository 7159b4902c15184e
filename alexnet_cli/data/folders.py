"""Image folders: class discovery, the checked list of a folder's images (from its index), validation splits,
and the files that predict is given.

An ImageSet holds its paths and labels as flat tensors (samples.py), so a set of 1.28 million images is three
buffers rather than millions of Python objects.
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet_cli.data import index as indexmod
from alexnet_cli.data.headers import DECODE_DRAFT_SIZE
from alexnet_cli.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    first_visit,
    is_image_file,
    open_image_in_scope,
    pillow_warnings,
    scan_threads,
    visible_folders,
)
from alexnet_cli.data.names import class_name, class_names
from alexnet_cli.data.samples import Paths, Strings
from alexnet_cli.errors import DataError
from alexnet_cli.observer import Progress, no_progress
from alexnet_cli.runtime.distributed import Dist, from_local_rank_zero

CHECKS = ("index", "decode", "none")


@dataclass(frozen=True)
class ImageSet:
    """A labelled set of images under `root`, with the class names their labels index."""

    root: Path
    classes: tuple[str, ...]
    names: Strings  # each image's path under root
    labels: torch.Tensor  # int64, one per image
    sizes: torch.Tensor | None = None  # (n, 2) int32 width and height from the headers, where they were read
    skipped: tuple[str, ...] = field(default=())  # one "path: reason" per unusable file
    folders: tuple[str, ...] = field(default=())  # each class's folder as written on disk, where it differs

    def __len__(self) -> int:
        return len(self.names)

    @property
    def paths(self) -> Paths:
        return Paths(str(self.root), self.names)

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, positions: Sequence[int] | torch.Tensor, skipped: tuple[str, ...] = ()) -> ImageSet:
        positions = torch.as_tensor(positions, dtype=torch.long)
        sizes = self.sizes[positions] if self.sizes is not None else None
        return ImageSet(self.root, self.classes, self.names.take(positions), self.labels[positions], sizes, skipped,
                        self.folders)

    def relative(self) -> list[str]:
        """Each image's path under root with `/` on every OS: what split.json stores."""
        return [name.replace(os.sep, "/") for name in self.names]


def find_classes(root: Path) -> list[str]:
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (give a folder with one subfolder per class)")
    classes = visible_folders(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"{root} has no class subfolders: lay images out as {root}/<class>/<image>.jpg")
    seen: dict[tuple[int, int], str] = {}
    for name in classes:  # a link from one class folder to another would give its images two labels
        status = os.stat(root / name)
        other = seen.setdefault((status.st_dev, status.st_ino), name)
        if other != name:
            raise DataError(f"{root}: the class folders {other} and {name} are one folder (a link): keep one")
    return classes


def _some(names: Sequence[str], shown: int = 8) -> str:
    """Names for one line: the first few, and how many more."""
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_image_folder(root: str | Path, classes: Sequence[str] | None = None, strict: bool = False,
                      check: str = "index", progress: Progress = no_progress, dist: Dist | None = None,
                      report=lambda line: None) -> ImageSet:
    """Read an ImageFolder tree (root/<class>/**/<image>). With `classes`, labels follow that order and every
    folder must be one of them (evaluation against a checkpoint's classes).

    `check` says how much is known about each file before the first step:
      index   its header and end marker, from the folder's index (index.py: only new and changed files are
              opened, and under torchrun one process per node opens them);
      decode  that, and a decode of every image (alexnet check, --strict);
      none    its name alone (one pass, such as evaluation: the loader skips a bad file when it meets it).
    Files that are not used are listed in `skipped` with the reason; with `strict`, the first is an error.
    `report` is told one line about the index.
    """
    if check not in CHECKS:
        raise ValueError(check)
    root = Path(root)
    found = find_classes(root)
    names = class_names(root, found)
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - {class_name(name) for name in classes})
        if unknown:
            raise DataError(
                f"{root} has classes the model does not know: {_some(unknown)} (it knows {_some(classes)})"
            )
    if check == "none":
        listing = indexmod.walk(root, found, stat=False)
        usable = torch.ones(len(listing.names), dtype=torch.bool)
        usable[list(listing.excluded)] = False
        skipped = [f"{os.path.join(str(root), listing.names[i])}: {why}" for i, why in listing.excluded.items()]
        sizes = None
    else:
        folder_index = _shared_index(root, found, progress, dist, report)
        listing, usable = folder_index.listing, folder_index.usable()
        skipped = folder_index.reasons(str(root))
        sizes = torch.stack([folder_index.width, folder_index.height], dim=1)
    if strict and skipped:
        raise DataError(f"--strict: {skipped[0]}")
    positions = usable.nonzero().flatten()
    known = [class_name(name) for name in classes]
    to_label = torch.tensor([known.index(name) for name in names], dtype=torch.long)
    on_disk = [""] * len(classes)
    for folder, name in zip(found, names):
        on_disk[known.index(name)] = folder
    images = ImageSet(root, tuple(classes), listing.names.take(positions),
                      to_label[listing.folder[positions].long()], sizes[positions] if sizes is not None else None,
                      tuple(skipped), tuple(on_disk) if on_disk != list(classes) else ())
    if check == "decode":
        images = _decode_all(images, strict, progress)
    if len(images) == 0:
        raise DataError(f"no readable images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images


def _shared_index(root: Path, found: Sequence[str], progress, dist: Dist | None, report) -> indexmod.FolderIndex:
    """The folder's index, built by one process per node: under torchrun, local rank 0 builds (or refreshes)
    it while the other ranks of its node wait, then they read what it saved. A rank that cannot read that very
    index (it could not be saved, or the file is not the one just built) builds its own."""
    if dist is None or not dist.enabled:
        built = indexmod.build_index(root, found, progress)
        report(built.describe())
        return built.index
    if dist.local_rank == 0:
        built = indexmod.build_index(root, found, progress)
        report(built.describe())
        from_local_rank_zero([built.saved is None, *built.index.fingerprint()], dist)
        return built.index
    saved, *fingerprint = from_local_rank_zero([0, *indexmod.NO_FINGERPRINT], dist)
    index = indexmod.read_index(os.path.realpath(root)) if saved else None
    if index is not None and index.folders == tuple(found) and index.fingerprint() == fingerprint:
        return index
    return indexmod.build_index(root, found).index


def _decode_all(images: ImageSet, strict: bool, progress) -> ImageSet:
    """Decode every image once (at a reduced JPEG scale): those that fail are named in `skipped`."""
    paths = images.paths
    keep, skipped = [], list(images.skipped)
    with pillow_warnings(), ThreadPoolExecutor(scan_threads()) as pool, \
            progress(f"decoding {images.root}", len(images)) as advance:
        try:
            for position, reason in enumerate(pool.map(_decodes, paths)):
                advance(1)
                if reason is None:
                    keep.append(position)
                elif strict:
                    raise DataError(f"--strict: {reason}")
                else:
                    skipped.append(reason)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # stop now: the images still queued are not needed
            raise
    return images if len(keep) == len(images) else images.subset(keep, tuple(skipped))


def _decodes(path: str) -> str | None:
    try:
        open_image_in_scope(path, DECODE_DRAFT_SIZE)
    except UnreadableImage as exc:
        return str(exc)
    return None


def loose_images(root: Path) -> list[str]:
    """The images directly in `root`, beside its class folders: no class holds them, so nothing uses them."""
    try:
        with os.scandir(root) as scan:
            return sorted(entry.name for entry in scan if is_image_file(entry.name) and entry.is_file())
    except OSError:
        return []


def empty_classes(images: ImageSet) -> list[str]:
    """'name (why)' for each class with no usable image: an empty folder, one of unusable files, or one that
    cannot be read."""
    empty = []
    for position, (name, count) in enumerate(zip(images.classes, images.counts())):
        if count:
            continue
        try:
            files = len(os.listdir(images.root / (images.folders[position] if images.folders else name)))
            why = f"{files} files, none usable" if files else "an empty folder"
        except OSError as exc:
            why = f"cannot be read: {exc.strerror or exc}"
        empty.append(f"{name} ({why})")
    return empty


def refuse_empty_classes(images: ImageSet) -> None:
    """DataError naming each class of a training folder that has no usable image: it would train an output
    that nothing ever teaches."""
    empty = empty_classes(images)
    if empty:
        raise DataError(f"{images.root}: {'a class has' if len(empty) == 1 else 'classes have'} no images: "
                        f"{', '.join(empty)}; add images, or remove the folder")


def say_loose_images(root: Path, warn) -> None:
    """One warning naming the images beside the class folders, which no class holds."""
    loose = loose_images(root)
    if loose:
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3:,} more" if len(loose) > 3 else "")
        warn(f"{len(loose):,} image{'s are' if len(loose) > 1 else ' is'} directly in {root}, in no class folder, "
             f"and not used: {shown}")


# The names of a data set's splits: as class folders they mean that DATA is the parent of train/ and val/.
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test")


def refuse_split_folders(root: Path, classes: Sequence[str]) -> None:
    """DataError when `root`'s class folders are a data set's splits (train/, val/, test/): training there
    would learn to tell the splits apart. The line names the folder that was probably meant."""
    splits = [name for name in classes if name.lower() in SPLIT_NAMES]
    if len(splits) < 2 and not (splits and len(splits) == len(classes)):
        return
    train = next((name for name in splits if name.lower() in ("train", "training")), splits[0])
    raise DataError(f"{root} holds the splits {', '.join(splits)}, not classes: give {Path(root) / train} (its "
                    f"{'sibling validation folder is found' if len(splits) > 1 else 'classes are its subfolders'})")


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
    """Hold out `fraction` of each class (at least one image of any class that has two or more; a class of
    one image keeps it for training, and has no held-out image). Each part is in path order."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(images.labels.tolist()):
        by_class.setdefault(label, []).append(position)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    names = list(images.names)

    def in_path_order(positions: list[int]) -> list[int]:
        return sorted(positions, key=names.__getitem__)

    return images.subset(in_path_order(train), images.skipped), images.subset(in_path_order(val))


def split_from_file(images: ImageSet, split_file: Path) -> tuple[ImageSet, ImageSet]:
    """Re-create a saved split: the images listed as validation there are validation again."""
    try:
        held_out = set(json.loads(split_file.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the saved split {split_file}: {exc}") from None
    held_out = {str(path).replace("\\", "/") for path in held_out}  # written on Windows, read anywhere
    is_val = [name in held_out for name in images.relative()]
    train = [i for i, held in enumerate(is_val) if not held]
    val = [i for i, held in enumerate(is_val) if held]
    return images.subset(train, images.skipped), images.subset(val)


def split_record(val: ImageSet, fraction: float, seed: int) -> dict[str, Any]:
    return {"fraction": fraction, "seed": seed, "val": val.relative()}


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files, folders (searched recursively, class subfolders or not) and globs -> (image paths, problems).

    A file named explicitly is kept whatever its extension; files found in folders or by globs must look
    like images. Order is stable: inputs in the order given, each folder's files sorted.
    """
    found: list[str] = []
    problems: list[str] = []
    walked: set[tuple[int, int]] = set()  # folders seen: a symlink cycle is followed once
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
            if os.path.isdir(match) and first_visit(match, walked):
                for directory, subdirs, files in os.walk(match, followlinks=True):
                    subdirs[:] = [name for name in visible_folders(subdirs)
                                  if first_visit(os.path.join(directory, name), walked)]
                    found.extend(os.path.join(directory, f) for f in sorted(files) if is_image_file(f))
            elif not os.path.isdir(match) and is_image_file(match):
                found.append(match)
        if len(found) == before:
            problems.append(f"{item}: no images found")
    return list(dict.fromkeys(found)), problems  # each path once, in the order found

