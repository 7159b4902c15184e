"""`alexnet data pets DIR`: the original's cats-and-dogs task on real photos, the Oxford-IIIT Pet data set.

torchvision's `OxfordIIITPet` downloads and checks the data set (7,349 photos of 37 breeds, each a cat or
a dog). We then lay its own trainval/test split out as ImageFolder trees, DIR/train/{cat,dog} and
DIR/test/{cat,dog}, with hard links where the filesystem allows (no second copy of 800 MB), else symbolic
links, else copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets import OxfordIIITPet

from alexnet_cli.errors import DataError, first_line
from alexnet_cli.runtime.files import link_or_copy

SPLITS = {"trainval": "train", "test": "test"}
SPECIES = {1: "cat", 2: "dog"}  # the annotation files' third column


@dataclass
class PetsReport:
    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    methods: dict[str, int] = field(default_factory=dict)  # "hard link" / "symbolic link" / "copy" / "present"


def prepare_pets(root: str | Path, download: bool = True) -> PetsReport:
    root = Path(root)
    report = PetsReport(root)
    for split, folder in SPLITS.items():
        try:
            # Downloads (and checks the archives' MD5) once; afterwards it only checks the folders exist.
            dataset = OxfordIIITPet(root, split=split, target_types="binary-category", download=download)
        except (RuntimeError, OSError) as exc:
            first = first_line(exc)
            raise DataError(f"could not get the Oxford-IIIT Pet data set into {root}: {first}") from None
        base = Path(dataset.root) / "oxford-iiit-pet"
        # The split files list `image_id class_id species breed_id`; species 1 is a cat, 2 a dog.
        annotations = base / "annotations" / f"{split}.txt"
        counts = dict.fromkeys(SPECIES.values(), 0)
        for line in annotations.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            image_id, species = parts[0], SPECIES.get(int(parts[2]))
            source = base / "images" / f"{image_id}.jpg"
            if species is None or not source.is_file():
                continue
            target = root / folder / species / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            method = link_or_copy(source, target)
            report.methods[method] = report.methods.get(method, 0) + 1
            counts[species] += 1
        if len(dataset) != sum(counts.values()):
            missing = len(dataset) - sum(counts.values())
            raise DataError(f"{missing} images of the {split} split are missing under {base / 'images'}")
        report.counts[folder] = counts
    return report
