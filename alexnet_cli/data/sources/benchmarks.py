"""`alexnet data fashion-mnist DIR` and `alexnet data cifar10 DIR`: real benchmark sets as ImageFolder trees.

torchvision's own `FashionMNIST` and `CIFAR10` classes fetch and read the raw files (and check their MD5
where torchvision does); we write each image once as a PNG into DIR/train/<class>/ and DIR/test/<class>/.
For a machine with no internet, `--from PATH` takes the raw files the data set's own download fetches
(Fashion-MNIST's four `*-ubyte.gz` files, CIFAR-10's `cifar-10-python.tar.gz`) and places them where
torchvision looks, so the same reading code runs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10, FashionMNIST
from torchvision.datasets.utils import extract_archive

from alexnet_cli.errors import ConfigError, DataError, first_line
from alexnet_cli.runtime.files import atomic_write

SETS = ("fashion-mnist", "cifar10")
VAL_PER_CLASS = 200  # validation images per class, taken from the end of the training split


@dataclass
class DatasetReport:
    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class folder -> images
    written: int = 0  # PNGs written now (the rest were there from an earlier run)


def folder_name(class_name: str) -> str:
    """A class name as a folder name on every OS: Fashion-MNIST's 'T-shirt/top' becomes 'T-shirt-top'."""
    return re.sub(r'[\\/:*?"<>|]+', "-", class_name).strip(" .") or "class"


def _raw_files(name: str, source: Path) -> list[Path]:
    """The raw files under `source` (a folder, or one file) that the data set's download would fetch."""
    wanted = [Path(url).name for url, _ in FashionMNIST.resources] if name == "fashion-mnist" else [CIFAR10.filename]
    found = []
    for file_name in wanted:
        candidates = [source] if source.is_file() else [source / file_name, *sorted(source.rglob(file_name))]
        match = next((c for c in candidates if c.name == file_name and c.is_file()), None)
        if match is None:
            raise DataError(f"{source} does not hold {file_name}, a raw file of {name}")
        found.append(match)
    return found


def _place_raw(name: str, root: Path, source: Path) -> None:
    """Put the raw files where torchvision's class looks, extracted as its download would leave them."""
    files = _raw_files(name, source)
    if name == "fashion-mnist":
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for file in files:
            if not (raw / file.name.removesuffix(".gz")).is_file():
                shutil.copyfile(file, raw / file.name)
                extract_archive(str(raw / file.name), str(raw))
    elif not (root / "cifar-10-batches-py").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        extract_archive(str(files[0]), str(root))


def _open(name: str, root: Path, train: bool, download: bool):
    cls = FashionMNIST if name == "fashion-mnist" else CIFAR10
    try:
        return cls(str(root), train=train, download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        first = first_line(exc)
        hint = "" if download else " (give --from PATH with its raw files, or let it download)"
        raise DataError(f"could not read {name} into {root}: {first}{hint}") from None


def prepare_dataset(name: str, root: str | Path, per_class: int | None = None, val_per_class: int = VAL_PER_CLASS,
                    source: Path | None = None, download: bool = True) -> DatasetReport:
    """Write DIR/val/<class>/NNNNN.png (the last `val_per_class` of each class of the training split, in the
    file's order), DIR/train/<class>/ (the first `per_class` of the rest, or all of it) and DIR/test/<class>/
    (the whole test split). NNNNN is the image's index in its split. `alexnet train DIR/train` then validates
    on DIR/val, and the test split stays unseen until `alexnet evaluate DIR/test`. Files already there are
    kept, so a rerun is cheap."""
    if name not in SETS:
        raise ConfigError(f"unknown data set {name!r}: choose one of {', '.join(SETS)}")
    if per_class is not None and per_class <= 0:
        raise ConfigError(f"--per-class must be positive, got {per_class}")
    if val_per_class < 0:
        raise ConfigError(f"--val-per-class must be 0 or more, got {val_per_class}")
    root = Path(root)
    if source is not None:
        if not source.exists():
            raise DataError(f"--from {source} does not exist")
        _place_raw(name, root, source)
        download = False
    report = DatasetReport(root)
    for train in (True, False):
        dataset = _open(name, root, train, download)
        folders = [folder_name(c) for c in dataset.classes]
        labels = [int(label) for label in dataset.targets]
        splits = _assign(labels, per_class, val_per_class) if train else ["test"] * len(labels)
        if train:
            short = [f for i, f in enumerate(folders) if labels.count(i) <= val_per_class]
            if short:
                raise ConfigError(f"--val-per-class {val_per_class} leaves no training images of {short[0]}")
        for used in dict.fromkeys(s for s in splits if s):
            report.counts[used] = dict.fromkeys(folders, 0)
        for index, (split, label) in enumerate(zip(splits, labels)):
            if split is None:
                continue
            report.counts[split][folders[label]] += 1
            target = root / split / folders[label] / f"{index:05d}.png"
            if not target.is_file():
                report.written += _write_png(dataset.data[index], target)
    return report


def _assign(labels: list[int], per_class: int | None, val_per_class: int) -> list[str | None]:
    """Each training-split image's folder: val (the last `val_per_class` of its class), train (the first
    `per_class` of the others) or None (left out)."""
    totals = {label: labels.count(label) for label in set(labels)}
    seen: dict[int, int] = {}
    splits: list[str | None] = []
    for label in labels:
        position = seen.get(label, 0)
        seen[label] = position + 1
        if position >= totals[label] - val_per_class:
            splits.append("val")
        elif per_class is None or position < per_class:
            splits.append("train")
        else:
            splits.append(None)
    return splits


def _write_png(pixels, target: Path) -> int:
    """One image (a uint8 HxW or HxWx3 array or tensor) as a PNG, written atomically, so an interrupted run
    never leaves a half-written image behind."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    atomic_write(target, lambda file: image.save(file, format="PNG"), durable=False)
    return 1
