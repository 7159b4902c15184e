"""alexnet demo: the built-in data set, and the whole train -> evaluate -> predict flow on a tiny one."""

from __future__ import annotations

import hashlib
import json

import pytest
from support.helpers import invoke, one_error_line

from alexnet_cli.data.sources import demo as demomod


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_demo_data_is_an_imagefolder_of_four_textures_made_deterministically(tmp_path):
    data = demomod.ensure_demo_data(tmp_path / "a", per_class=3, val_per_class=2, image_size=67)
    assert data.created
    for split, count in (("train", 3), ("val", 2)):
        for name in demomod.CLASSES:
            images = sorted((tmp_path / "a" / split / name).iterdir())
            assert len(images) == count and all(p.suffix == ".png" for p in images)
    again = demomod.ensure_demo_data(tmp_path / "b", per_class=3, val_per_class=2, image_size=67)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    # Train and validation images are different draws, not copies.
    train = {p.read_bytes() for p in (tmp_path / "a" / "train").rglob("*.png")}
    assert not train & {p.read_bytes() for p in (tmp_path / "a" / "val").rglob("*.png")}
    assert again.created


def test_demo_classes_differ_in_structure_not_in_colour(tmp_path):
    """Each class spans many hues: the mean colour of an image says little about its class."""
    from PIL import Image, ImageStat

    data = demomod.ensure_demo_data(tmp_path / "d", per_class=12, val_per_class=1, image_size=67)
    for name in demomod.CLASSES:
        hues = {round(ImageStat.Stat(Image.open(p).convert("HSV")).mean[0] / 32)
                for p in (data.train / name).iterdir()}
        assert len(hues) >= 4, (name, hues)


def test_existing_demo_data_is_reused_and_a_foreign_folder_is_refused(tmp_path):
    demomod.ensure_demo_data(tmp_path / "demo", per_class=2, val_per_class=1)
    reused = demomod.ensure_demo_data(tmp_path / "demo", per_class=50)
    assert not reused.created and reused.train_per_class == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"precious")
    from alexnet_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="not a demo data set"):
        demomod.ensure_demo_data(tmp_path / "mine")
    assert (tmp_path / "mine" / "holiday.jpg").read_bytes() == b"precious"
    assert not list(tmp_path.glob(".alexnet-demo-*"))  # no staging folder left behind


@pytest.mark.whole_machine
def test_demo_runs_train_evaluate_predict_and_prints_the_commands(runner, tmp_path):
    result = invoke(runner, ["demo", "tiny", "--per-class", "4", "--epochs", "1", "--batch-size", "8",
                             "--workers", "0"])
    assert result.exit_code == 0, result.output
    out = result.output
    marker = json.loads((tmp_path / "tiny" / demomod.MARKER).read_text())
    assert marker["train_per_class"] == 4 and marker["val_per_class"] == 1
    assert (tmp_path / "runs" / "train-1" / "best.pt").is_file()
    assert "Epoch [1/1], Iter [2/2] Loss:" in out  # the progress lines (plain, off a terminal)
    assert "confusion matrix" in out
    assert "predictions" in out and "stripes_0000.png" in out
    assert "validation accuracy:" in out
    for command in ("alexnet train tiny/train --val tiny/val --epochs 1 --image-size 67",
                    "alexnet evaluate tiny/val --weights runs/train-1/best.pt"):
        assert command in " ".join(out.split()), out
    # A second run reuses the data set and trains into a new run folder.
    again = invoke(runner, ["demo", "tiny", "--epochs", "1", "--batch-size", "8", "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "reusing tiny" in again.output
    assert (tmp_path / "runs" / "train-2" / "best.pt").is_file()


def test_demo_rejects_impossible_options_before_making_anything(runner, tmp_path):
    result = invoke(runner, ["demo", "x", "--image-size", "32"])
    assert result.exit_code == 2
    assert "67" in one_error_line(result)
    result = invoke(runner, ["demo", "x", "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs" in one_error_line(result)
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()
