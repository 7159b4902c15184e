import csv
import json
import os
from pathlib import Path

import pytest
import torch
from support.helpers import FAST_TRAIN, TEST_ARCH, invoke, one_error_line, solid_folder


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_end_to_end_writes_the_run_folder(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "2", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    run = Path("runs/train-1")
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["circle", "square"]
    assert config["epochs"] == 2 and config["lr"] == 2e-4 and config["val"] is None  # DEFAULT_LR["adam"]
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(r["val_images"] == "6" for r in rows)  # the sibling data/val was found and used
    assert config["validation"] == f"folder {shapes / 'val'}"
    assert f"validation: folder {shapes / 'val'}" in result.stderr
    # images per class are shown before training starts
    assert result.stderr.index("images per class") < result.stderr.index("Epoch [1/2]")

    evaluated = invoke(runner, ["evaluate", str(shapes / "val"), "--json", "--workers", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 6
    assert "using the newest run's checkpoint: runs/train-1/best.pt" in evaluated.stderr

    second = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", *FAST_TRAIN])
    assert second.exit_code == 0
    assert Path("runs/train-2/last.pt").is_file()  # a new run never overwrites an old one


def test_plain_log_lines_when_not_a_terminal(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0
    # 8+8 training images at batch 8: 2 iterations, and the log says so (the original printed Iter [2/1]).
    assert "Epoch [1/1], Iter [1/2] Loss: " in result.stderr
    assert "Epoch [1/1], Iter [2/2] Loss: " in result.stderr
    assert "Iter [3/" not in result.stderr


def test_log_interval(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run",
                             "--log-interval", "5", *FAST_TRAIN])
    assert "Iter [1/2]" not in result.stderr
    assert "Iter [2/2]" in result.stderr  # the last iteration of an epoch is always logged


def test_checkpoint_is_weights_only_and_self_describing(runner, shapes):
    invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    checkpoint = torch.load("run/best.pt", weights_only=True)
    assert checkpoint["class_names"] == ["circle", "square"]
    assert checkpoint["arch"] == TEST_ARCH and checkpoint["num_classes"] == 2
    assert checkpoint["preprocess"]["image_size"] == 67
    assert checkpoint["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert checkpoint["format_version"] == 1 and checkpoint["epoch"] == 1
    for key in ("optimizer", "rng", "metrics", "tool_version", "config", "model"):
        assert key in checkpoint
    assert not any(name.startswith(".") for name in os.listdir("run"))  # no temp files left behind


def test_model_beats_chance_on_separable_data(runner, tmp_path):
    solid_folder(tmp_path / "sep" / "train", per_class=16, seed=1)
    solid_folder(tmp_path / "sep" / "val", per_class=6, seed=2)
    result = invoke(runner, ["train", "sep/train", "--epochs", "2", "--output", "run", "--lr", "1e-3", *FAST_TRAIN])
    assert result.exit_code == 0
    best = max(float(r["val_acc"]) for r in read_metrics(Path("run")))
    assert best >= 0.9, f"validation accuracy {best} on dark-vs-bright images"


def test_resume_is_exact(runner, shapes):
    # A constant rate: extending a cosine run from 1 to 2 epochs stretches its schedule, so it cannot match a
    # straight 2-epoch run (tests/test_recipes.py resumes a cosine run stopped inside an epoch, exactly).
    args = ["train", str(shapes / "train"), *FAST_TRAIN, "--val-split", "0.25", "--scheduler", "none"]
    assert invoke(runner, [*args, "--epochs", "2", "--output", "straight"]).exit_code == 0
    assert invoke(runner, [*args, "--epochs", "1", "--output", "stopped"]).exit_code == 0
    resumed = invoke(runner, ["train", "--resume", "stopped/last.pt", "--epochs", "2", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming stopped/last.pt at epoch 2 of 2" in resumed.stderr

    a = torch.load("straight/last.pt", weights_only=True)["model"]
    b = torch.load("stopped/last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    columns = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_images", "lr")
    straight, stopped = read_metrics(Path("straight")), read_metrics(Path("stopped"))
    assert [[r[c] for c in columns] for r in straight] == [[r[c] for c in columns] for r in stopped]


def test_resume_extends_a_finished_run_and_refuses_to_redo_it(runner, shapes):
    args = ["train", str(shapes / "train"), *FAST_TRAIN, "--epochs", "1", "--output", "run"]
    assert invoke(runner, args).exit_code == 0
    again = invoke(runner, ["train", "--resume", "run/last.pt", "--workers", "0"])
    assert again.exit_code == 2
    assert "already finished 1 epochs: pass --epochs greater than 1" in again.stderr
    assert "index:" not in again.stderr and "images per class" not in again.stderr  # said before any data work
    extended = invoke(runner, ["train", "--resume", "run/last.pt", "--epochs", "2", "--workers", "0"])
    assert extended.exit_code == 0
    assert [r["epoch"] for r in read_metrics(Path("run"))] == ["1", "2"]


def test_val_split_is_stratified_saved_and_reused(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "pics", classes=("circle", "square", "triangle"), per_class=10, size=72)
    result = invoke(runner, ["train", "pics", "--epochs", "1", "--output", "run", "--val-split", "0.2", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    split = json.loads(Path("run/split.json").read_text())
    assert split["fraction"] == 0.2 and split["seed"] == 1
    assert sorted(p.split(os.sep)[0] for p in split["val"]) == ["circle"] * 2 + ["square"] * 2 + ["triangle"] * 2
    assert read_metrics(Path("run"))[0]["val_images"] == "6"
    # the same seed gives the same split
    invoke(runner, ["train", "pics", "--epochs", "1", "--output", "run2", "--val-split", "0.2", *FAST_TRAIN])
    assert json.loads(Path("run2/split.json").read_text())["val"] == split["val"]


def test_default_split_when_there_is_no_val_folder(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "pics", classes=("circle", "square"), per_class=10, size=72)
    result = invoke(runner, ["train", "pics", "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0
    assert "10% stratified split" in result.stderr
    assert read_metrics(Path("run"))[0]["val_images"] == "2"


def test_patience_stops_early(runner, shapes):
    # lr 1e-12: nothing changes, so the validation accuracy can never improve after epoch 1.
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "5", "--patience", "1", "--lr", "1e-12",
                             "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0
    assert "early stop" in result.stderr
    assert len(read_metrics(Path("run"))) == 2


def test_sgd_with_cosine_schedule(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "2", "--optimizer", "sgd",
                             "--scheduler", "cosine", "--label-smoothing", "0.1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    config = json.loads(Path("run/config.json").read_text())
    assert (config["lr"], config["weight_decay"]) == (0.01, 5e-4)
    rows = read_metrics(Path("run"))
    assert float(rows[0]["lr"]) == pytest.approx(0.01)
    assert float(rows[1]["lr"]) == pytest.approx(0.005)  # half-way down the cosine
    state = torch.load("run/last.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0.9


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing"], 3, "data folder not found: missing"),
        (["--epochs", "0"], 2, "--epochs must be positive"),
        (["--batch-size", "-1"], 2, "--batch-size must be positive"),
        (["--val-split", "1.5"], 2, "--val-split must be a fraction"),
        (["--arch", "resnet"], 2, "unknown architecture 'resnet'"),
        (["--optimizer", "rmsprop"], 2, "unknown optimizer"),
        (["--image-size", "32"], 2, "minimum is 67"),
    ],
)
def test_bad_training_options(runner, shapes, args, code, message):
    full = ["train", *(args if args[0] == "missing" else [str(shapes / "train"), *args])]
    result = invoke(runner, full)
    assert result.exit_code == code
    assert message in one_error_line(result)
    assert not Path("runs").exists()  # a failed start leaves no empty run folder behind


def test_one_class_and_mismatched_validation(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "one", classes=("circle",), per_class=4, size=72)
    result = invoke(runner, ["train", "one", *FAST_TRAIN])
    assert result.exit_code == 3 and "only one class" in result.stderr

    make_shapes_folder(tmp_path / "d" / "train", classes=("circle", "square"), per_class=4, size=72)
    make_shapes_folder(tmp_path / "d" / "val", classes=("circle", "star"), per_class=2, size=72)
    result = invoke(runner, ["train", "d/train", *FAST_TRAIN])
    assert result.exit_code == 3 and "validation classes differ" in result.stderr


def test_val_split_zero_trains_without_validation(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "pics", classes=("circle", "square"), per_class=4, size=72)
    result = invoke(runner, ["train", "pics", "--epochs", "1", "--output", "run", "--val-split", "0", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "no validation set" in result.stderr
    row = read_metrics(Path("run"))[0]
    assert row["val_acc"] == "" and row["train_acc"] != ""
    assert Path("run/best.pt").is_file()  # the last epoch: nothing else tells epochs apart
