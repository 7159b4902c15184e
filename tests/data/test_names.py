"""Names that are bytes or Unicode: file and folder names that are not valid UTF-8, one class name written two
ways (NFC and NFD), and symlinks that loop back into the tree."""

from __future__ import annotations

import csv
import io
import json
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image
from support.helpers import FAST_TRAIN, invoke, one_error_line

LATIN1_CAFE = b"caf\xe9".decode("utf-8", "surrogateescape")  # "café" as Latin-1 bytes: not valid UTF-8


def _image(path: Path, shade: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (72, 72), (shade, 255 - shade, 40)).save(path)


@pytest.fixture
def odd_names(tmp_path) -> Path:
    folder = tmp_path / "odd"
    _image(folder / f"{LATIN1_CAFE}.png")
    _image(folder / "plain.png")
    return folder


@pytest.mark.parametrize("fmt", ["table", "--json", "--csv"])
def test_a_file_name_that_is_not_utf8_passes_through_predict(runner, trained_run, odd_names, fmt, monkeypatch):
    """Each byte that is not UTF-8 is written \\xNN (docs/predict.md), in every output format."""
    result = invoke(runner, ["predict", "odd", "--weights", "run/best.pt", "--workers", "0",  # short: one line
                             *([fmt] if fmt != "table" else [])])
    assert result.exit_code == 0, result.output
    escaped = "odd/caf\\xe9.png"
    if fmt == "--json":
        assert escaped in [row["path"] for row in json.loads(result.stdout)]
    elif fmt == "--csv":
        assert escaped in [row["path"] for row in csv.DictReader(io.StringIO(result.stdout))]
    else:
        assert escaped in result.output
    result.stdout.encode("utf-8")  # nothing left that a UTF-8 stream refuses


def test_predict_explain_and_check_with_a_name_that_is_not_utf8(runner, trained_run, odd_names):
    result = invoke(runner, ["predict", "odd", "--weights", "run/best.pt", "--workers", "0", "--explain", "cams",
                             "--json"])
    assert result.exit_code == 0, result.output
    assert any("caf\\xe9__" in row["explanation"] for row in json.loads(result.stdout))
    (odd_names / "a").mkdir()
    (odd_names / "b").mkdir()
    os.replace(odd_names / f"{LATIN1_CAFE}.png", odd_names / "a" / f"{LATIN1_CAFE}.png")
    os.replace(odd_names / "plain.png", odd_names / "b" / "plain.png")
    (odd_names / "a" / f"{LATIN1_CAFE}-broken.png").write_bytes(b"not an image")
    result = invoke(runner, ["check", "odd", "--json"])
    assert result.exit_code == 0, result.output
    assert "odd/a/caf\\xe9-broken.png: " in json.loads(result.stdout)["train"][0]["skipped"][0]


def test_predict_output_file_with_a_name_that_is_not_utf8(runner, trained_run, odd_names):
    result = invoke(runner, ["predict", str(odd_names), "--weights", str(trained_run / "best.pt"), "--workers", "0",
                             "--output", "out.csv"])
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.png" in Path("out.csv").read_text(encoding="utf-8")


def test_a_class_folder_that_is_not_utf8_trains_and_evaluates(runner, tmp_path):
    data = tmp_path / "data"
    for name, shade in ((LATIN1_CAFE, 20), ("tea", 230)):
        for i in range(3):
            _image(data / name / f"{i}.png", shade + i)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--val-split", "0", "--output", "run",
                             *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert json.loads(Path("run/config.json").read_text())["class_names"] == ["caf\\xe9", "tea"]
    report = invoke(runner, ["evaluate", str(data), "--weights", "run/best.pt", "--json", "--workers", "0"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["images"] == 6


def test_class_names_are_nfc_so_one_name_written_two_ways_matches(runner, tmp_path, trained_run):
    """A model trained on "café" (NFC) evaluates a folder where macOS wrote "café" as NFD."""
    from alexnet_cli.data.folders import load_image_folder

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    _image(tmp_path / "train" / nfd / "a.png")
    _image(tmp_path / "train" / "tea" / "b.png")
    _image(tmp_path / "eval" / nfc / "c.png")
    _image(tmp_path / "eval" / "tea" / "d.png")
    train = load_image_folder(tmp_path / "train")
    assert train.classes == (nfc, "tea")
    evaluated = load_image_folder(tmp_path / "eval", classes=train.classes)
    assert evaluated.labels.tolist() == [0, 1]


def test_one_class_written_two_ways_in_one_folder_is_refused(runner, tmp_path):
    for name in (unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "tea"):
        _image(tmp_path / "data" / name / "a.png")
    result = invoke(runner, ["train", str(tmp_path / "data"), *FAST_TRAIN])
    assert result.exit_code == 3 and "written two ways in Unicode" in one_error_line(result)


def test_a_symlink_cycle_is_followed_once(runner, tmp_path):
    """A link to its own folder and one to the data folder: each image is listed once (not once per level),
    and no class borrows another's images."""
    data = tmp_path / "data"
    for name, shade in (("a", 20), ("b", 230)):
        for i in range(3):
            _image(data / name / f"{i}.png", shade + i)
    os.symlink(data / "a", data / "a" / "self")
    os.symlink(data, data / "a" / "up")
    os.symlink(data / "b", data / "a" / "sibling")
    from alexnet_cli.data.folders import expand_inputs, load_image_folder

    images = load_image_folder(data)
    assert len(images) == 6 and images.counts() == [3, 3]
    found, problems = expand_inputs([str(data)])
    assert len(found) == 6 and not problems
    outside = tmp_path / "outside"
    _image(outside / "x.png")
    os.symlink(outside, data / "b" / "linked")
    assert load_image_folder(data).counts() == [3, 4]  # a link out of the tree is followed, once


def test_two_class_folders_that_are_one_folder_are_refused(runner, tmp_path):
    for i in range(2):
        _image(tmp_path / "data" / "a" / f"{i}.png")
    _image(tmp_path / "data" / "c" / "x.png")
    os.symlink(tmp_path / "data" / "a", tmp_path / "data" / "b")
    result = invoke(runner, ["train", str(tmp_path / "data"), *FAST_TRAIN])
    assert result.exit_code == 3 and "the class folders a and b are one folder (a link)" in one_error_line(result)

