"""Pictures of a run: curves and confusion PNGs, TensorBoard, Grad-CAM (--explain) and --save-errors."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from support.helpers import FAST_TRAIN, invoke, one_error_line

from alexnet_cli.inference import gradcam as explain
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.models.registry import ARCHITECTURES, arch_info


def _train(runner, data: Path, *extra: str, output: str = "run"):
    result = invoke(runner, ["train", str(data), "--epochs", "2", "--output", output, *FAST_TRAIN, *extra])
    assert result.exit_code == 0, result.output
    return result


def _png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = Image.open(path)
    image.load()
    return image


def test_training_writes_curves_and_confusion_pngs_and_a_sparkline(runner, shapes, tmp_path):
    pytest.importorskip("matplotlib")
    result = _train(runner, shapes / "train", "--val", str(shapes / "val"))
    curves, confusion = _png(tmp_path / "run" / "curves.png"), _png(tmp_path / "run" / "confusion_matrix.png")
    assert curves.width >= 800 and 250 <= curves.height <= 600
    assert confusion.width >= 400 and confusion.height >= 200
    record = json.loads((tmp_path / "run" / "confusion.json").read_text())
    assert record["class_names"] == ["circle", "square"] and sum(map(sum, record["confusion_matrix"])) == 6
    assert "val acc per epoch" in result.output and any(c in result.output for c in "▁▂▃▄▅▆▇█")
    # alexnet plot redraws them from the run folder.
    (tmp_path / "run" / "curves.png").unlink()
    replot = invoke(runner, ["plot", "run"])
    assert replot.exit_code == 0 and (tmp_path / "run" / "curves.png").is_file()


def test_without_matplotlib_training_succeeds_and_says_how_to_get_plots(runner, shapes, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = _train(runner, shapes / "train")
    assert "plots need matplotlib: pip install 'alexnet-cli[plots]', then alexnet plot RUN_DIR" in result.output
    assert not (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "best.pt").is_file()
    failed = invoke(runner, ["plot", "run"])
    assert failed.exit_code == 2 and "pip install 'alexnet-cli[plots]'" in one_error_line(failed)


def test_plot_of_a_folder_that_is_not_a_run_is_a_clear_error(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(runner, ["plot", "empty"])
    assert result.exit_code == 3 and "no metrics.csv" in one_error_line(result)


def test_tensorboard_writes_an_event_file_with_scalars_and_samples(runner, shapes, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(runner, shapes / "train", "--val", str(shapes / "val"), "--tensorboard")
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"epoch/train_loss", "epoch/val_acc", "epoch/lr", "step/train_loss"} <= set(tags["scalars"])
    assert [e.step for e in accumulator.Scalars("epoch/val_acc")] == [1, 2]
    assert len(accumulator.Scalars("step/train_loss")) == 4  # 16 images at batch 8, 2 epochs
    assert "samples/images" in tags["images"]


def test_tensorboard_missing_is_a_clear_error_before_anything_is_written(runner, shapes, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = invoke(runner, ["train", str(shapes / "train"), "--tensorboard", *FAST_TRAIN])
    assert result.exit_code == 2 and "pip install 'alexnet-cli[tensorboard]'" in one_error_line(result)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_grad_cam_works_for_every_architecture(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3).eval()
    size = arch_info(arch).default_image_size
    cams, logits = explain.grad_cam(model, torch.randn(2, 3, size, size))
    assert cams.shape[0] == 2 and cams.shape[1:] == (13, 13) and logits.shape == (2, 3)
    assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    assert explain.target_layer(model) is not None and not model.training


def test_explain_writes_one_png_per_image_at_the_input_size(runner, shapes, trained_run, tmp_path):
    wide = tmp_path / "wide.jpg"
    Image.open(next((shapes / "val" / "circle").iterdir())).resize((150, 96)).save(wide)
    inputs = [str(p) for p in sorted((shapes / "val").rglob("*.png"))] + [str(wide)]
    result = invoke(runner, ["predict", *inputs, "--weights", "run/best.pt", "--explain", "cams", "--json",
                             "--workers", "0"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    written = sorted((tmp_path / "cams").iterdir())
    assert len(written) == len(inputs) == len(records)
    for record in records:
        picture = _png(Path(record["explanation"]))
        assert picture.size == Image.open(record["path"]).size
        assert record["label"] in Path(record["explanation"]).name
        assert f"{record['confidence'] * 100:.0f}pct" in Path(record["explanation"]).name


def _blob_folder(root: Path, n: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """'blob': one bright disc on a dark noisy ground; 'empty': the ground alone. Returns each disc."""
    rng = random.Random(seed)
    discs = {}
    for name in ("blob", "empty"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = Image.new("RGB", (128, 128), (60, 60, 60))
            draw = ImageDraw.Draw(image)
            for _ in range(300):
                v = rng.randrange(30, 100)
                draw.point((rng.randrange(128), rng.randrange(128)), fill=(v, v, v))
            path = root / name / f"{i}.png"
            if name == "blob":
                r, cx, cy = 16.0, rng.uniform(30, 98), rng.uniform(30, 98)
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 250, 250))
                discs[str(path)] = (cx, cy, r)
            image.save(path)
    return discs


@pytest.mark.whole_machine
def test_grad_cam_peaks_inside_the_object_the_model_detects(runner, tmp_path):
    _blob_folder(tmp_path / "blobs" / "train", 24, seed=1)
    discs = _blob_folder(tmp_path / "blobs" / "val", 6, seed=2)
    result = invoke(runner, ["train", "blobs/train", "--val", "blobs/val", "--image-size", "128", "--epochs", "2",
                             "--batch-size", "8", "--workers", "0", "--output", "run"])
    assert result.exit_code == 0, result.output
    from alexnet_cli.artifacts.checkpoint import load_checkpoint
    from alexnet_cli.data.images import open_image

    checkpoint = load_checkpoint(Path("run/best.pt"))
    model = checkpoint.build().eval()
    transform = checkpoint.preprocess.eval_transforms(on_device=False)
    for path, (cx, cy, r) in discs.items():
        image = open_image(path)
        cams, logits = explain.grad_cam(model, transform(image)[None])
        assert logits.argmax(1).item() == checkpoint.class_names.index("blob")
        heat = explain.full_size_cam(cams[0], image.width, image.height, checkpoint.preprocess)
        y, x = divmod(int(heat.argmax()), heat.shape[1])
        assert (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2, (path, (x, y), (cx, cy))


def test_save_errors_matches_the_confusion_matrix_off_its_diagonal(runner, shapes, tmp_path):
    _train(runner, shapes / "train")
    # Each validation image twice, once under each class: whatever the model predicts, exactly one of the two
    # copies is wrong, so there are as many errors as images.
    for name, other in (("circle", "square"), ("square", "circle")):
        for path in (shapes / "val" / name).iterdir():
            for label in (name, other):
                (tmp_path / "twice" / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, tmp_path / "twice" / label / f"{name}_{path.name}")
    result = invoke(runner, ["evaluate", "twice", "--weights", "run/best.pt", "--save-errors", "errors", "--json",
                             "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names, matrix = report["class_names"], report["confusion_matrix"]
    off_diagonal = {f"{names[i]}__as__{names[j]}": matrix[i][j]
                    for i in range(len(names)) for j in range(len(names)) if i != j and matrix[i][j]}
    found = {folder.name: len(list(folder.iterdir())) for folder in (tmp_path / "errors").iterdir()}
    assert found == off_diagonal
    assert sum(found.values()) == 6  # 6 validation images, each wrong once
    for folder in (tmp_path / "errors").iterdir():
        true = folder.name.split("__as__")[0]
        for linked in folder.iterdir():
            assert (tmp_path / "twice" / true / linked.name).read_bytes() == linked.read_bytes()
