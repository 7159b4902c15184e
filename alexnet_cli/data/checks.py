"""`alexnet check DATA`: look at a data set before training on it.

Per class: how many images, which files would be skipped and why, and which images are odd (tiny, very
elongated, or not RGB); classes with no image (refused by train) or one (nothing to hold out); images
beside the class folders, which no class holds. Across train and validation: files with the same content in
both, which make the validation accuracy a lie.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from alexnet_cli.data import folders as datamod
from alexnet_cli.data.names import printable

# Shorter than this, an image is blown up more than 3x to reach a 227 crop: worth a look.
SMALL_SIDE = 75
# Wider (or taller) than this, a centre crop throws most of the picture away.
ELONGATED = 3.0


@dataclass(frozen=True)
class CheckConfig:
    data: Path
    val: Path | None = None  # None: a sibling val/ or test/ if there is one


def _digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _describe(images: datamod.ImageSet) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Per-class rows, and the content hash of every image (hash -> paths)."""
    rows: list[dict[str, Any]] = [{"class": name, "images": 0, "skipped": [], "modes": {}, "small": [],
                                   "elongated": []} for name in images.classes]
    by_class = {str(images.root / name): row for name, row in zip(images.classes, rows)}
    for reason in images.skipped:
        path = reason.split(": ", 1)[0]
        owner = next((row for prefix, row in by_class.items() if path.startswith(prefix + os.sep)), None)
        if owner is not None:
            owner["skipped"].append(reason)
    hashes: dict[str, list[str]] = {}
    for path, label in zip(images.paths, images.labels.tolist()):
        row = rows[label]
        row["images"] += 1
        with Image.open(path) as image:  # the header only: load_image_folder has decoded every file
            width, height = image.size
            mode = image.mode
        row["modes"][mode] = row["modes"].get(mode, 0) + 1
        if min(width, height) < SMALL_SIDE:
            row["small"].append(f"{path} ({width}x{height})")
        if max(width, height) > ELONGATED * min(width, height):
            row["elongated"].append(f"{path} ({width}x{height})")
        hashes.setdefault(_digest(path), []).append(path)
    return rows, hashes


def check(cfg: CheckConfig) -> dict[str, Any]:
    datamod.refuse_split_folders(cfg.data, datamod.find_classes(Path(cfg.data)))
    train = datamod.load_image_folder(cfg.data, check="decode")
    val_dir = cfg.val or datamod.find_sibling_validation(Path(cfg.data))
    report: dict[str, Any] = {"data": str(cfg.data), "val": str(val_dir) if val_dir else None}
    train_rows, train_hashes = _describe(train)
    report["train"] = train_rows
    report["duplicates_within_train"] = [paths for paths in train_hashes.values() if len(paths) > 1]
    report["duplicates_train_val"] = []
    report["val_classes_differ"] = None
    if val_dir is not None:
        val = datamod.load_image_folder(val_dir, check="decode")
        val_rows, val_hashes = _describe(val)
        report["val_report"] = val_rows
        if set(val.classes) != set(train.classes):
            report["val_classes_differ"] = {"train": list(train.classes), "val": list(val.classes)}
        report["duplicates_train_val"] = [
            {"train": train_hashes[digest], "val": val_hashes[digest]}
            for digest in val_hashes if digest in train_hashes
        ]
    # Classes that would train a dead output, and files that no class holds.
    report["empty_classes"] = datamod.empty_classes(train)
    report["single_image_classes"] = [row["class"] for row in train_rows if row["images"] == 1]
    report["loose_images"] = [str(Path(cfg.data) / name) for name in datamod.loose_images(Path(cfg.data))]
    if val_dir is not None:
        report["loose_images"] += [str(Path(val_dir) / name) for name in datamod.loose_images(Path(val_dir))]
    report["problems"] = (
        sum(len(row["skipped"]) for row in train_rows + report.get("val_report", []))
        + len(report["duplicates_train_val"]) + (1 if report["val_classes_differ"] else 0)
        + len(report["empty_classes"]) + len(report["loose_images"])
    )
    return _printable(report)  # paths as text every output holds (data/names.py)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value
