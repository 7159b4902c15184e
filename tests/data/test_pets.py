"""`alexnet data pets`, offline: a small fake tree in the layout torchvision's OxfordIIITPet expects."""

import os
from pathlib import Path

from PIL import Image
from support.helpers import invoke

# image_id class_id species(1 cat, 2 dog) breed_id, as in the data set's annotations/*.txt
TRAINVAL = ["Abyssinian_1 1 1 1", "Abyssinian_2 1 1 1", "beagle_1 2 2 1", "beagle_2 2 2 1", "beagle_3 2 2 1"]
TEST = ["Bengal_1 6 1 3", "pug_1 26 2 20"]


def fake_pets(root: Path) -> None:
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    for line in TRAINVAL + TEST:
        Image.new("RGB", (50, 40), (120, 80, 40)).save(base / "images" / f"{line.split()[0]}.jpg")
    (base / "annotations" / "trainval.txt").write_text("\n".join(TRAINVAL) + "\n")
    (base / "annotations" / "test.txt").write_text("\n".join(TEST) + "\n")


def test_pets_lays_out_train_and_test(runner, tmp_path, monkeypatch):
    import torchvision.datasets.oxford_iiit_pet as pets_module

    monkeypatch.setattr(pets_module, "download_and_extract_archive", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("must not download when the data set is there")))
    fake_pets(tmp_path / "pets")
    result = invoke(runner, ["data", "pets", str(tmp_path / "pets")])
    assert result.exit_code == 0, result.output
    tree = {split: {c: sorted(p.name for p in (tmp_path / "pets" / split / c).iterdir()) for c in ("cat", "dog")}
            for split in ("train", "test")}
    assert tree == {
        "train": {"cat": ["Abyssinian_1.jpg", "Abyssinian_2.jpg"],
                  "dog": ["beagle_1.jpg", "beagle_2.jpg", "beagle_3.jpg"]},
        "test": {"cat": ["Bengal_1.jpg"], "dog": ["pug_1.jpg"]},
    }
    assert "5 images (2 cat, 3 dog)" in result.stderr and "2 images (1 cat, 1 dog)" in result.stderr
    linked = tmp_path / "pets" / "train" / "cat" / "Abyssinian_1.jpg"
    original = tmp_path / "pets" / "oxford-iiit-pet" / "images" / "Abyssinian_1.jpg"
    assert os.stat(linked).st_ino == os.stat(original).st_ino
    assert "hard link 7" in result.stderr

    again = invoke(runner, ["data", "pets", str(tmp_path / "pets")])  # running it twice is harmless
    assert again.exit_code == 0 and "present 7" in again.stderr


def test_pets_copies_where_links_fail(runner, tmp_path, monkeypatch):
    fake_pets(tmp_path / "pets")

    def no_links(*args, **kwargs):
        raise OSError("links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(Path, "symlink_to", no_links)
    result = invoke(runner, ["data", "pets", str(tmp_path / "pets")])
    assert result.exit_code == 0, result.output
    assert "copy 7" in result.stderr
    assert not (tmp_path / "pets" / "test" / "dog" / "pug_1.jpg").is_symlink()


def test_pets_offline_without_the_data_is_one_clear_line(runner, tmp_path):
    result = invoke(runner, ["data", "pets", str(tmp_path / "nothing"), "--no-download"])
    assert result.exit_code == 3
    assert "could not get the Oxford-IIIT Pet data set" in result.stderr
