"""`alexnet demo`: a built-in data set, then train, evaluate and predict on it, as a newcomer's first run.

The data set is four textures (stripes, checks, dots, rings) drawn by Pillow at random scales, angles, phases
and hues: telling them apart needs the pattern's structure, not a colour. It is generated deterministically
from the seed, into a temporary folder that is renamed into place, so an interrupted start leaves nothing
half-written; a later run reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alexnet_cli.config.settings import DemoConfig
from alexnet_cli.data.sources.synthetic import TEXTURES, make_shapes_folder
from alexnet_cli.errors import ConfigError, DataError

MARKER = ".alexnet-demo.json"
CLASSES = TEXTURES


@dataclass(frozen=True)
class DemoData:
    root: Path
    created: bool
    train_per_class: int
    val_per_class: int

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def val(self) -> Path:
        return self.root / "val"


def ensure_demo_data(root: Path, *, per_class: int = DemoConfig.per_class,
                     val_per_class: int = DemoConfig.val_per_class, image_size: int = DemoConfig.image_size,
                     seed: int = 0) -> DemoData:
    """The demo data set in `root` (root/train/<class>, root/val/<class>), generated if it is not there yet."""
    marker = root / MARKER
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
            return DemoData(root, False, int(saved["train_per_class"]), int(saved["val_per_class"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{marker} is damaged: delete {root} and run the demo again") from None
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} exists and is not a demo data set: give the demo an empty or new folder")
    if per_class < 2 or val_per_class < 1:
        raise ConfigError("the demo needs at least 2 training and 1 validation image per class")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".alexnet-demo-", dir=root.parent))
    try:
        make_shapes_folder(staging / "train", CLASSES, per_class, image_size, seed=seed)
        make_shapes_folder(staging / "val", CLASSES, val_per_class, image_size, seed=seed + 1)
        record = {"classes": list(CLASSES), "train_per_class": per_class, "val_per_class": val_per_class,
                  "image_size": image_size, "seed": seed}
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DemoData(root, True, per_class, val_per_class)


def sample_images(data: DemoData, per_class: int = 1) -> list[str]:
    """A few validation images, one per class by default, for the demo's predict step."""
    picks = []
    for name in CLASSES:
        picks += sorted(str(p) for p in (data.val / name).iterdir())[:per_class]
    return picks
