"""`alexnet data imagenet`: ILSVRC-2012's three archives, faked small in the test, laid out as image folders by
torchvision's parsing (the MD5 it checks is the fake archives', set where torchvision keeps the published ones)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from support.helpers import invoke, one_error_line

from alexnet_cli.data.folders import load_image_folder

pytest.importorskip("scipy")

WNIDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus"}
VAL_LABELS = [2, 1, 1, 2, 1]  # the devkit's ground truth: ILSVRC2012_IDs, one per validation image in name order


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (seed * 40 % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def fake_archives(folder: Path) -> dict[str, str]:
    """The three archives, small, with ILSVRC2012's names and layout; returns each one's MD5 by role."""
    import numpy as np
    import scipy.io

    folder.mkdir(parents=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height", "num_train_images"]
    synsets = np.array([(i + 1, wnid, words, "a fish", 0, 0, 3) for i, (wnid, words) in enumerate(WNIDS.items())]
                       + [(3, "n02512053", "fish", "any fish", 2, 1, 0)],  # an inner node: not a class
                       dtype=[(f, "O") for f in fields])
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{label}\n" for label in VAL_LABELS).encode())
    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w") as train:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(3):
                    _add(tar, f"{wnid}_{i}.JPEG", _jpeg(c * 3 + i))
            _add(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(len(VAL_LABELS)):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(10 + i))
    return {role: hashlib.md5((folder / name).read_bytes()).hexdigest() for role, name in (
        ("devkit", "ILSVRC2012_devkit_t12.tar.gz"), ("train", "ILSVRC2012_img_train.tar"),
        ("val", "ILSVRC2012_img_val.tar"))}


@pytest.fixture
def archives(tmp_path, monkeypatch) -> Path:
    from torchvision.datasets import imagenet

    source = tmp_path / "downloads"
    for role, md5 in fake_archives(source).items():
        monkeypatch.setitem(imagenet.ARCHIVE_META, role, (imagenet.ARCHIVE_META[role][0], md5))
    return source


def test_data_imagenet_lays_out_train_val_and_the_class_names(runner, archives):
    result = invoke(runner, ["data", "imagenet", "imagenet", "--from", str(archives)])
    assert result.exit_code == 0, result.output
    root = Path("imagenet")
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(WNIDS)
    assert sorted(p.name for p in (root / "train" / "n01440764").iterdir()) == [
        f"n01440764_{i}.JPEG" for i in range(3)]
    # validation images sorted into their class by the devkit's ground truth (ILSVRC2012_ID 1 is n01440764)
    val = {wnid: sorted(p.name for p in (root / "val" / wnid).iterdir()) for wnid in WNIDS}
    assert val == {"n01440764": ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG",
                                 "ILSVRC2012_val_00000005.JPEG"],
                   "n01443537": ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000004.JPEG"]}
    assert json.loads((root / "class_names.json").read_text()) == {wnid: words.split(", ") for wnid, words in
                                                                    WNIDS.items()}
    from alexnet_cli.data.names import display_names

    assert display_names(root / "train", tuple(WNIDS)).names == ("tench", "goldfish")  # what training shows
    assert not list(root.glob("*.partial")) and not list((root / "train").glob("*.tar"))  # nothing left over
    assert "imagenet/train: 6 images in 2 classes (unpacked now)" in result.stderr
    assert "--recipe paper --epochs 90" in result.stderr
    images = load_image_folder(root / "train")
    assert images.classes == tuple(WNIDS) and len(images) == 6

    again = invoke(runner, ["data", "imagenet", "imagenet", "--from", str(archives)])
    assert again.exit_code == 0, again.output
    assert "imagenet/val: 5 images in 2 classes (there already)" in again.stderr
    assert "checking" not in again.stderr  # a finished split is not unpacked (nor its MD5 taken) again


def test_data_imagenet_refuses_an_archive_that_is_not_the_published_one(runner, archives, monkeypatch):
    from torchvision.datasets import imagenet

    # the published MD5 of the validation archive, which the fake one does not have
    monkeypatch.setitem(imagenet.ARCHIVE_META, "val", ("ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622"))
    result = invoke(runner, ["data", "imagenet", "imagenet", "--from", str(archives)])
    assert result.exit_code != 0
    assert one_error_line(result) == ("error: ILSVRC2012_img_val.tar is not the published ILSVRC2012 archive (its "
                                      "MD5 differs): download it again")
    assert (Path("imagenet") / "train").is_dir() and not (Path("imagenet") / "val").exists()


def test_data_imagenet_names_the_archives_it_lacks(runner, archives):
    (archives / "ILSVRC2012_img_train.tar").unlink()
    result = invoke(runner, ["data", "imagenet", "imagenet", "--from", str(archives)])
    assert result.exit_code != 0
    assert "does not hold ILSVRC2012_img_train.tar" in one_error_line(result)
