"""The hard cases a new user meets before the first step: tiny or odd training folders, validation that would
hold out nothing, places that cannot be written, and resumes given options they do not take. Each ends in a
clear line and its documented exit code, or in the right result, never in silence."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image
from support.helpers import FAST_TRAIN, invoke, one_error_line, solid_folder


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (72, 72), (shade, shade, shade)).save(path)


def test_an_empty_class_folder_is_refused_by_train_and_flagged_by_check(runner, tmp_path):
    """An empty class would train an output that nothing teaches: train refuses it by name, check counts it."""
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    (data / "zebra").mkdir()
    result = invoke(runner, ["train", str(data), "--epochs", "1", *FAST_TRAIN])
    assert result.exit_code == 3, result.output
    assert "a class has no images: zebra (an empty folder)" in one_error_line(result)
    assert not (tmp_path / "runs").exists()
    check = invoke(runner, ["check", str(data), "--json"])
    report = json.loads(check.stdout)
    assert report["empty_classes"] == ["zebra (an empty folder)"] and report["problems"] == 1


def test_a_class_folder_that_cannot_be_read_is_named_with_why(tmp_path, monkeypatch):
    from alexnet_cli.data import folders
    from alexnet_cli.errors import DataError

    data = solid_folder(tmp_path / "data", per_class=2, seed=0)
    (data / "locked").mkdir()
    images = folders.load_image_folder(data)
    real_listdir = os.listdir

    def listdir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(folders.os, "listdir", listdir)
    with pytest.raises(DataError, match=r"locked \(cannot be read: Permission denied\)"):
        folders.refuse_empty_classes(images)


def test_loose_images_beside_the_class_folders_are_named(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    for name in ("stray.png", "other.jpg"):
        _image(data / name, 128)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--val-split", "0", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert f"2 images are directly in {data}, in no class folder, and not used: other.jpg, stray.png" in \
        result.stderr.replace("\n", " ")
    report = json.loads(invoke(runner, ["check", str(data), "--json"]).stdout)
    assert sorted(report["loose_images"]) == [str(data / "other.jpg"), str(data / "stray.png")]


def test_a_split_that_would_hold_out_nothing_trains_without_validation_and_says_so(runner, tmp_path):
    """Two classes of one image each: the 10% split holds out nothing. The run says so before it trains and
    keeps the last epoch as best.pt; no epoch reports a validation accuracy of 0%."""
    for name, shade in (("a", 10), ("b", 240)):
        _image(tmp_path / "data" / name / "only.png", shade)
    result = invoke(runner, ["train", str(tmp_path / "data"), "--epochs", "3", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())
    assert "holds out no image (no class has two): training without validation, so best.pt is the last epoch" in \
        stderr
    assert stderr.index("holds out no image") < stderr.index("Epoch [1/3]")
    assert "val acc" not in stderr
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [row["val_acc"] for row in rows] == ["", "", ""] and not (tmp_path / "run" / "split.json").exists()
    import torch

    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 3  # the last epoch
    assert "alexnet evaluate TEST_DATA --weights run/best.pt" in stderr


def test_a_class_with_one_image_is_named_as_unmeasured(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=6, seed=0)
    _image(data / "lonely" / "one.png", 128)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "no held-out image for lonely (one image each, kept for training)" in " ".join(result.stderr.split())


def test_a_class_with_one_training_image_beside_a_validation_folder_is_named(runner, tmp_path):
    solid_folder(tmp_path / "data" / "train", per_class=3, seed=0)
    solid_folder(tmp_path / "data" / "val", per_class=1, seed=1)
    _image(tmp_path / "data" / "train" / "grey" / "one.png", 128)
    _image(tmp_path / "data" / "val" / "grey" / "two.png", 120)
    result = invoke(runner, ["train", str(tmp_path / "data" / "train"), "--epochs", "1", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "one training image only in grey: the model sees little of that class" in " ".join(result.stderr.split())


def test_evaluate_run_uses_exactly_the_images_the_split_held_out(runner, tmp_path):
    """After a run that split validation off DATA, the hint is `alexnet evaluate --run RUN`, and that evaluates
    the held-out images alone (never DATA, which holds the training images too)."""
    data = solid_folder(tmp_path / "data", per_class=10, seed=0)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "next: alexnet evaluate --run run " in " ".join(result.stderr.split())
    held = json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    report = json.loads(invoke(runner, ["evaluate", "--run", "run", "--json", "--workers", "0"]).stdout)
    assert report["images"] == len(held) == 2
    whole = json.loads(invoke(runner, ["evaluate", str(data), "--weights", "run/best.pt", "--json",
                                       "--workers", "0"]).stdout)
    assert whole["images"] == 20


def test_evaluate_run_uses_the_runs_validation_folder(runner, trained_run, trained_checkpoint):
    """A run that validated on a folder (here the sibling val/, recorded in config.json) evaluates on it."""
    import shutil

    for name in ("config.json",):
        shutil.copyfile(trained_checkpoint.parent / name, trained_run / name)
    report = json.loads(invoke(runner, ["evaluate", "--run", str(trained_run), "--json", "--workers", "0"]).stdout)
    config = json.loads((trained_run / "config.json").read_text())
    assert config["val"] is None and Path(config["validation_folder"]).name == "val" and report["images"] == 6


def test_evaluate_run_refuses_a_run_without_validation_and_a_folder_that_is_not_a_run(runner, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    result = invoke(runner, ["evaluate", "--run", str(run)])
    assert result.exit_code == 4 and "is not a run folder of alexnet train" in one_error_line(result)
    (run / "config.json").write_text(json.dumps({"data": "data", "val": None}))
    result = invoke(runner, ["evaluate", "--run", str(run)])
    assert result.exit_code == 4 and "trained without validation" in one_error_line(result)
    result = invoke(runner, ["evaluate"])
    assert result.exit_code == 2 and "alexnet evaluate --run" in one_error_line(result)


def test_a_run_folder_that_cannot_be_written_fails_before_any_data_work(runner, tmp_path, monkeypatch):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    (tmp_path / "afile").write_text("not a folder")
    result = invoke(runner, ["train", str(data), "--output", str(tmp_path / "afile" / "run"), *FAST_TRAIN])
    assert result.exit_code == 7, result.output
    assert "cannot write the run folder" in one_error_line(result) and "is a file, not a folder" in result.stderr
    assert "index:" not in result.stderr and "device:" not in result.stderr

    # A folder this user cannot write (the tests may run as root, for whom every folder is writable).
    from alexnet_cli.runtime import files

    real_access = os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: False if Path(path) == tmp_path
                        else real_access(path, mode))
    result = invoke(runner, ["train", str(data), *FAST_TRAIN])
    assert result.exit_code == 7, result.output
    assert f"cannot write the run folder runs: {tmp_path} is not writable by this user" in one_error_line(result)
    assert "index:" not in result.stderr and not (tmp_path / "runs").exists()

    result = invoke(runner, ["demo", "demo-data", "--epochs", "1"])
    assert result.exit_code == 7 and "cannot write the demo data demo-data" in one_error_line(result)
    assert not (tmp_path / "demo-data").exists()


def test_output_files_are_checked_before_the_model_runs(runner, trained_run, tmp_path):
    (tmp_path / "afile").write_text("")
    image = tmp_path / "one.png"
    _image(image, 50)
    for args, what in ((["predict", str(image), "--output", "afile/out.json"], "--output"),
                       (["predict", str(image), "--explain", "afile/cams"], "--explain"),
                       (["evaluate", str(tmp_path), "--save-errors", "afile/errors"], "--save-errors"),
                       (["export", "--output", "afile/model.onnx"],
                        "the exported model")):
        result = invoke(runner, [*args] + (["--weights", str(trained_run / "best.pt")]))
        assert result.exit_code == 7, (args, result.output)
        assert f"cannot write {what}" in one_error_line(result) and "device:" not in result.stderr


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "somewhere/file"),
                                   OSError(30, "Read-only file system", "somewhere/file")])
def test_a_late_write_error_is_one_line_with_its_exit_code(error, capsys):
    """A place that becomes unwritable after the checks still gives one line and exit code 7, not "unexpected"."""
    import typer

    from alexnet_cli.cli.app import boundary

    with pytest.raises(typer.Exit) as caught, boundary():
        raise error
    assert caught.value.exit_code == 7
    assert capsys.readouterr().err.strip() == f"error: cannot use somewhere/file: {error.strerror}"


def test_a_resume_names_the_options_it_ignores(runner, trained_run, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=4, seed=0)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--output", "run2", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    result = invoke(runner, ["train", "--resume", "run2/last.pt", "--epochs", "2", "--lr", "0.5",
                             "--recipe", "modern", "--workers", "0"])
    assert result.exit_code == 0, result.output
    line = " ".join(result.stderr.split())
    assert "--resume goes on with the run's own settings (its config.json): ignoring --lr, --recipe;" in line
    assert "recipe modern:" not in line
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config["lr"] != 0.5 and config["recipe"] is None


def test_a_recipes_warm_up_shortens_to_fit_a_short_run():
    """`--recipe modern --epochs 1` trains (its one warm-up epoch would leave none); a warm-up the user typed
    that leaves no epoch is still refused, naming the flag."""
    from alexnet_cli.config.recipes import expand
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.errors import ConfigError

    settings, from_recipe = expand("modern", {"data": Path("d"), "epochs": 1})
    assert from_recipe["warmup_epochs"] == 0 and TrainConfig(**settings).warmup_epochs == 0
    assert expand("modern", {"data": Path("d"), "epochs": 5})[1]["warmup_epochs"] == 1
    with pytest.raises(ConfigError, match="--warmup-epochs 1 leaves no epoch"):
        TrainConfig(**expand("modern", {"data": Path("d"), "epochs": 1, "warmup_epochs": 1})[0])


def test_a_new_run_never_writes_over_a_run_in_its_output_folder(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    result = invoke(runner, ["train", str(data), "--epochs", "1", "--val-split", "0", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("last.pt", "config.json")}
    result = invoke(runner, ["train", str(data), "--epochs", "2", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 2, result.output
    assert "--output run already holds a run (last.pt, best.pt, config.json, metrics.csv): resume it with " \
           "--resume run/last.pt" in one_error_line(result)
    assert "index:" not in result.stderr
    assert before == {name: (tmp_path / "run" / name).read_bytes() for name in before}


def test_validation_on_the_training_folder_itself_is_refused(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    result = invoke(runner, ["train", str(data), "--val", str(tmp_path / "data" / "."), *FAST_TRAIN])
    assert result.exit_code == 2 and "is the training folder itself" in one_error_line(result), result.output


def test_a_run_folder_inside_the_training_folder_is_refused(runner, tmp_path):
    data = solid_folder(tmp_path / "data", per_class=3, seed=0)
    result = invoke(runner, ["train", str(data), "--output", str(data / "dark" / "run"), *FAST_TRAIN])
    assert result.exit_code == 2 and "is inside the training folder" in one_error_line(result), result.output
    assert not (data / "dark" / "run").exists()

