import json

import torch
from support.helpers import FAST_TRAIN, invoke

from alexnet_cli.artifacts.checkpoint import load_checkpoint
from alexnet_cli.data.folders import load_image_folder
from alexnet_cli.data.images import open_image


def test_evaluate_json_agrees_with_a_hand_count(runner, shapes, trained_run):
    result = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--json", "--precision",
                             "fp32", "--batch-size", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    # The hand count: one image at a time through the checkpoint's own preprocessing.
    checkpoint = load_checkpoint("run/best.pt")
    model, transform = checkpoint.build(), checkpoint.preprocess.eval_transforms(on_device=False)
    images = load_image_folder(shapes / "val", classes=checkpoint.class_names)
    confusion = [[0, 0], [0, 0]]
    losses = []
    with torch.no_grad():
        for path, label in zip(images.paths, images.labels.tolist()):
            logits = model(transform(open_image(path))[None])
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor([label])).item())
            confusion[label][logits.argmax(1).item()] += 1

    assert report["images"] == 6
    assert report["confusion_matrix"] == confusion
    assert report["accuracy"] == (confusion[0][0] + confusion[1][1]) / 6
    assert abs(report["loss"] - sum(losses) / 6) < 1e-5
    per_class = {row["class"]: row for row in report["per_class"]}
    assert per_class["circle"]["support"] == 3 and per_class["square"]["support"] == 3
    predicted_circle = confusion[0][0] + confusion[1][0]
    expected_precision = confusion[0][0] / predicted_circle if predicted_circle else 0.0
    assert abs(per_class["circle"]["precision"] - expected_precision) < 1e-9
    assert abs(per_class["circle"]["recall"] - confusion[0][0] / 3) < 1e-9
    assert report["top5_accuracy"] is None  # only 2 classes: top-5 would always be 100%


def test_evaluate_table_and_top_k(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import SHAPES, make_shapes_folder

    make_shapes_folder(tmp_path / "d" / "train", classes=SHAPES, per_class=3, size=72)
    make_shapes_folder(tmp_path / "d" / "val", classes=SHAPES, per_class=2, size=72, seed=5)
    invoke(runner, ["train", "d/train", "--epochs", "1", "--output", "run", *FAST_TRAIN])
    result = invoke(runner, ["evaluate", "d/val", "--weights", "run/best.pt", "--top-k", "3", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "top-3 " in result.stderr and "(top-3 error " in result.stderr and "(top-1 error " in result.stderr
    assert "confusion matrix" in result.stderr and "precision" in result.stderr
    report = json.loads(invoke(runner, ["evaluate", "d/val", "--weights", "run/best.pt", "--top-k", "3", "--json",
                                        "--workers", "0"]).stdout)
    assert report["top3_accuracy"] >= report["accuracy"]


def test_evaluate_without_any_run(runner, shapes):
    result = invoke(runner, ["evaluate", str(shapes / "val")])
    assert result.exit_code == 4
    assert "train one first" in result.stderr and "--weights" in result.stderr


def test_evaluate_rejects_unknown_classes(runner, trained_run, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "other", classes=("circle", "star"), per_class=2, size=72)
    result = invoke(runner, ["evaluate", "other", "--weights", "run/best.pt"])
    assert result.exit_code == 3
    assert "classes the model does not know: star" in result.stderr
