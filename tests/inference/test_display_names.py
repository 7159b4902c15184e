"""Real class names: class_names.json beside the data (as `alexnet data imagenet` writes it) or --class-names
gives each folder a display name, which the checkpoint stores and every output shows, JSON keeping the folder's
name too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import FAST_TRAIN, invoke, one_error_line, solid_folder

NAMES = {"dark": ["night sky", "the dark one"], "bright": "snow field"}


@pytest.fixture(scope="module")
def named_run(tmp_path_factory) -> Path:
    """A run trained on dark/ and bright/ folders with class_names.json in DATA's parent, as ImageNet's is."""
    from support.helpers import built_once
    from typer.testing import CliRunner

    def build(root: Path) -> None:
        solid_folder(root / "set" / "train", per_class=4, seed=0)
        (root / "set" / "class_names.json").write_text(json.dumps(NAMES))
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            patch.setenv("ALEXNET_CACHE_DIR", str(root / "user-cache"))
            result = invoke(CliRunner(), ["train", "set/train", "--epochs", "1", "--val-split", "0", "--output",
                                          "run", *FAST_TRAIN])
        assert result.exit_code == 0, result.output
        assert "class names: from set/class_names.json, e.g. bright -> snow field" in result.stderr

    return built_once(tmp_path_factory, "named", build)


def test_the_checkpoint_and_config_store_the_display_names(named_run):
    from alexnet_cli.artifacts.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(named_run / "run" / "best.pt")
    assert checkpoint.class_names == ("bright", "dark")
    assert checkpoint.display_names == ("snow field", "night sky") == checkpoint.labels
    config = json.loads((named_run / "run" / "config.json").read_text())
    assert config["display_names"] == ["snow field", "night sky"] and config["class_names"] == ["bright", "dark"]


def test_predict_shows_the_names_and_json_keeps_the_folders(runner, named_run):
    image = next((named_run / "set" / "train" / "dark").iterdir())
    table = invoke(runner, ["predict", str(image), "--weights", str(named_run / "run" / "best.pt"), "--workers", "0"])
    assert table.exit_code == 0, table.output
    words = " ".join(table.output.replace("│", " ").split())
    assert "night" in words and "snow" in words and not {"dark", "bright"} & set(words.split())  # names, not folders
    result = invoke(runner, ["predict", str(image), "--weights", str(named_run / "run" / "best.pt"), "--json",
                             "--workers", "0"])
    record = json.loads(result.stdout)[0]
    assert {record["label"], record["class"]} in ({"snow field", "bright"}, {"night sky", "dark"})
    assert {(item["label"], item["class"]) for item in record["top_k"]} == {("snow field", "bright"),
                                                                            ("night sky", "dark")}


def test_evaluate_and_save_errors_show_the_names(runner, named_run, tmp_path):
    result = invoke(runner, ["evaluate", str(named_run / "set" / "train"), "--weights",
                             str(named_run / "run" / "best.pt"), "--json", "--workers", "0",
                             "--save-errors", "errors"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["class_names"] == ["snow field", "night sky"] and report["class_folders"] == ["bright", "dark"]
    assert {row["class"] for row in report["per_class"]} == {"snow field", "night sky"}
    for folder in (tmp_path / "errors").iterdir() if (tmp_path / "errors").exists() else []:
        assert folder.name in ("snow field__as__night sky", "night sky__as__snow field")


def test_export_json_carries_the_labels(runner, named_run, tmp_path):
    result = invoke(runner, ["export", "--weights", str(named_run / "run" / "best.pt"), "--format", "torchscript",
                             "--output", "m.pt"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["class_names"] == ["bright", "dark"] and meta["labels"] == ["snow field", "night sky"]


def test_serve_answers_and_describes_with_the_names(named_run):
    import torch

    from alexnet_cli.inference.predict import load_predictor
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.runtime.context import resolve_runtime
    from alexnet_cli.serving.model import Output, ServedModel

    model = ServedModel(load_predictor(named_run / "run" / "best.pt", False, SilentObserver()),
                        resolve_runtime("cpu", False, "fp32", 0))
    metadata = model.metadata()
    assert metadata["classes"] == ["snow field", "night sky"] and metadata["class_folders"] == ["bright", "dark"]
    record = model.record(Output(torch.tensor([0.25, 0.75])), top_k=2)
    assert (record["label"], record["class"]) == ("night sky", "dark")


def test_class_names_option_and_its_refusals(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    (tmp_path / "names.json").write_text(json.dumps({"dark": "coal"}))
    result = invoke(runner, ["train", str(data), "--class-names", "names.json", "--epochs", "1", "--val-split", "0",
                             "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "names.json names 1 of 2 classes: the others show their folder's name (bright)" in \
        " ".join(result.stderr.split())
    assert json.loads(Path("run/config.json").read_text())["display_names"] == ["bright", "coal"]

    (tmp_path / "other.json").write_text(json.dumps({"cat": "a cat"}))
    (tmp_path / "broken.json").write_text("{not json")
    for name, message in (("other.json", "names none of the classes"), ("broken.json", "cannot read --class-names"),
                          ("missing.json", "cannot read --class-names")):
        result = invoke(runner, ["train", str(data), "--class-names", name, *FAST_TRAIN])
        assert result.exit_code == 3 and message in one_error_line(result), result.output


def test_two_folders_that_would_show_one_name_keep_apart(tmp_path):
    from alexnet_cli.data.names import display_names

    (tmp_path / "class_names.json").write_text(json.dumps({"a": "same", "b": "same", "c": "other"}))
    found = display_names(tmp_path, ["a", "b", "c"])
    assert found.names == ("same (a)", "same (b)", "other") and found.source == str(tmp_path / "class_names.json")


def test_a_class_names_file_beside_the_data_that_cannot_be_used_is_named(tmp_path):
    from alexnet_cli.data.names import display_names

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "class_names.json").write_text("[1, 2]")
    (tmp_path / "class_names.json").write_text(json.dumps({"zebra": "a zebra"}))
    found = display_names(tmp_path / "data", ["a", "b"])
    assert found.names == () and found.source is None
    assert [reason.split(": ", 1)[1] for reason in found.passed_over] == [
        "not a JSON object from each class folder to its name", "it names none of the classes"]
