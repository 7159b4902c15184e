"""`alexnet data imagenet DIR --from FOLDER`: ILSVRC-2012 as image folders, DIR/train/<wnid> and DIR/val/<wnid>.

ImageNet cannot be downloaded without an account, so the three archives come from FOLDER:
ILSVRC2012_img_train.tar (138 GB), ILSVRC2012_img_val.tar (6.3 GB) and ILSVRC2012_devkit_t12.tar.gz. The
parsing is torchvision's (`torchvision.datasets.imagenet`): it checks each archive's MD5 against the published
one, reads the class names and the validation labels from the devkit (with scipy: the `imagenet` extra),
unpacks the training archive's 1,000 class archives, and sorts the 50,000 validation images into class
folders. Each split is unpacked under a temporary name and renamed when whole, so an interrupted run leaves
nothing that looks finished, and a finished split is not unpacked again. The human class names go to
DIR/class_names.json (WordNet ID -> names), since the folders are named by WordNet ID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from torchvision.datasets import imagenet
from torchvision.datasets.imagenet import ARCHIVE_META

from alexnet_cli.errors import DataError, first_line, require_extra
from alexnet_cli.runtime.files import atomic_write_text

SPLITS = ("train", "val")
NAMES_FILE = "class_names.json"


@dataclass
class ImageNetReport:
    root: Path
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (classes, images)
    unpacked: list[str] = field(default_factory=list)  # splits unpacked now (the others were there already)


def archives(source: Path) -> dict[str, Path]:
    """The three archives in `source` by role (devkit, train, val), as torchvision names them."""
    if not source.is_dir():
        raise DataError(f"--from {source} is not a folder: give the folder that holds the ILSVRC2012 archives")
    found = {role: source / name for role, (name, _) in ARCHIVE_META.items()}
    missing = [path.name for path in found.values() if not path.is_file()]
    if missing:
        raise DataError(f"{source} does not hold {', '.join(missing)} (from image-net.org, ILSVRC2012)")
    return found


def prepare_imagenet(root: str | Path, source: str | Path, report_line=lambda line: None) -> ImageNetReport:
    """Lay out ILSVRC-2012 from the archives in `source` as root/train/<wnid>, root/val/<wnid> and
    root/class_names.json; `report_line` is told what happens, a line at a time."""
    root, source = Path(root), Path(source)
    found = archives(source)
    root.mkdir(parents=True, exist_ok=True)
    report = ImageNetReport(root)
    meta = root / imagenet.META_FILE
    if not meta.is_file():
        report_line(f"checking and reading {found['devkit'].name}")
        # torchvision imports scipy.io inside parse_devkit_archive
        require_extra("alexnet data imagenet reads the devkit with scipy", "imagenet", ("scipy",))
        _torchvision(imagenet.parse_devkit_archive, str(root), str(found["devkit"].resolve()))
    try:
        wnid_to_names, val_wnids = imagenet.load_meta_file(str(root))
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        raise DataError(f"{meta} is damaged ({exc}): remove it, and the devkit is read again") from None
    for split in SPLITS:
        target = root / split
        if not target.is_dir():
            archive = found[split]
            _room_for(archive, root)
            report_line(f"checking {archive.name} ({archive.stat().st_size / 1e9:,.1f} GB: its MD5 takes a while) "
                        f"and unpacking it into {target}")
            partial = root / f"{split}.partial"
            shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run left
            if split == "train":
                _torchvision(imagenet.parse_train_archive, str(root), str(archive.resolve()), str(partial.resolve()))
            else:
                _torchvision(imagenet.parse_val_archive, str(root), str(archive.resolve()), val_wnids,
                             str(partial.resolve()))
            os.replace(partial, target)
            report.unpacked.append(split)
        classes = [entry for entry in os.scandir(target) if entry.is_dir()]
        report.counts[split] = (len(classes), sum(len(os.listdir(entry.path)) for entry in classes))
    names = {wnid: list(names) for wnid, names in sorted(wnid_to_names.items())}  # the first is shown
    atomic_write_text(root / NAMES_FILE, json.dumps(names, indent=1, ensure_ascii=False) + "\n")
    return report


def _torchvision(parse, *args) -> None:
    """Run one of torchvision's parsers; its errors (a wrong MD5, a damaged archive) become one line."""
    try:
        parse(*args)
    except RuntimeError as exc:
        first = first_line(exc)
        damaged = re.match(r"The archive (.+) is not present in the root directory or is corrupted", first)
        if damaged:
            name = Path(damaged[1]).name
            first = f"{name} is not the published ILSVRC2012 archive (its MD5 differs): download it again"
        raise DataError(first) from None
    except (tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"could not unpack the ImageNet archives: {exc}") from None


def _room_for(archive: Path, root: Path) -> None:
    """Unpacking needs about the archive's size free where it goes (the training archive's 1,000 inner
    archives are each removed once unpacked)."""
    needed = int(archive.stat().st_size * 1.05)
    free = shutil.disk_usage(root).free
    if free < needed:
        raise DataError(f"{root} has {free / 1e9:,.1f} GB free; unpacking {archive.name} needs about "
                        f"{needed / 1e9:,.1f} GB")


# ImageNet-1k's classes in the order its models' outputs count them: the WordNet IDs, sorted (as an
# ImageFolder of the training set sorts its folders). These two ends tell that list from any other.
WNID = re.compile(r"n\d{8}")
FIRST_WNID, LAST_WNID, CLASSES = "n01440764", "n15075141", 1000


def wnid_order(folder: str | Path) -> tuple[str, ...]:
    """The 1,000 WordNet IDs in output order, for ImageNet weights evaluated on `folder`: from class_names.json
    in it or its parent (`alexnet data imagenet` writes one), else from its folders when all 1,000 are there.
    DataError, in one line, when its folders are not ImageNet's."""
    folder = Path(folder)
    folders = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir()) if folder.is_dir() else []
    strangers = [name for name in folders if not WNID.fullmatch(name)]
    if strangers or not folders:
        raise DataError(f"{folder}'s class folders are not ImageNet's WordNet IDs ({', '.join(strangers[:3]) or 'none'}"
                        f"): --pretrained evaluates torchvision's 1,000 ImageNet classes, on folders named "
                        f"{FIRST_WNID} ... {LAST_WNID}")
    order: list[str] = folders
    for names in (folder / NAMES_FILE, folder.parent / NAMES_FILE):
        try:
            keys = sorted(json.loads(names.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if len(keys) == CLASSES and all(WNID.fullmatch(str(key)) for key in keys):
            order = keys
            break
    if len(order) != CLASSES:
        raise DataError(f"{folder} has {len(folders):,} of ImageNet's {CLASSES:,} class folders and no "
                        f"{NAMES_FILE} beside it to place them in the weights' order (alexnet data imagenet "
                        "writes one)")
    if (order[0], order[-1]) != (FIRST_WNID, LAST_WNID):
        raise DataError(f"{folder}'s {CLASSES:,} WordNet IDs are not ImageNet-1k's ({order[0]} ... {order[-1]}, where "
                        f"ImageNet's run {FIRST_WNID} ... {LAST_WNID})")
    return tuple(order)
