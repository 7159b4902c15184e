import csv
import io
import json
import shutil

import pytest
from support.helpers import invoke


@pytest.fixture
def trained(shapes, trained_run):
    """`shapes`, and run/best.pt trained on them."""
    return shapes


def predict_json(runner, *args):
    result = invoke(runner, ["predict", *args, "--weights", "run/best.pt", "--json", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result


def test_file_folder_nested_folder_and_glob(runner, trained, tmp_path):
    one = str(trained / "val" / "circle" / "circle_0000.png")
    assert [r["path"] for r in predict_json(runner, one)[0]] == [one]
    assert len(predict_json(runner, str(trained / "val" / "circle"))[0]) == 3  # a folder without class subfolders
    assert len(predict_json(runner, str(trained / "val"))[0]) == 6  # nested: class subfolders
    assert len(predict_json(runner, str(trained / "val" / "*" / "*_0001.png"))[0]) == 2


def test_labels_probabilities_and_formats(runner, trained):
    results, _ = predict_json(runner, str(trained / "val"), "--top-k", "5")
    for r in results:
        assert r["label"] in ("circle", "square")
        assert len(r["top_k"]) == 2  # k is capped at the class count
        assert abs(sum(item["probability"] for item in r["top_k"]) - 1) < 1e-5
        assert r["confidence"] == r["top_k"][0]["probability"]
    csv_out = invoke(runner, ["predict", str(trained / "val"), "--weights", "run/best.pt", "--csv", "--workers", "0"])
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert len(rows) == 6 and rows[0]["label"] in ("circle", "square")
    table = invoke(runner, ["predict", str(trained / "val"), "--weights", "run/best.pt", "--workers", "0"])
    assert "confidence" in table.stderr and table.stdout == ""


def test_output_file(runner, trained):
    result = invoke(runner, ["predict", str(trained / "val"), "--weights", "run/best.pt", "--output", "out.csv",
                             "--workers", "0"])
    assert result.exit_code == 0
    with open("out.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_broken_file_is_skipped_and_named(runner, trained, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(trained / "val" / "circle", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    results, result = predict_json(runner, str(folder))
    assert len(results) == 3
    assert "broken.png" in result.stderr and "skipped" in result.stderr

    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "bad.jpg").write_bytes(b"nope")
    result = invoke(runner, ["predict", str(tmp_path / "only"), "--weights", "run/best.pt", "--workers", "0"])
    assert result.exit_code == 3
    assert "bad.jpg" in result.stderr


def test_predict_without_a_model(runner, shapes):
    result = invoke(runner, ["predict", str(shapes / "val")])
    assert result.exit_code == 4
    assert "train one first" in result.stderr and "--weights" in result.stderr and "--pretrained" in result.stderr
