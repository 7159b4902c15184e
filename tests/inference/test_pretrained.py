"""ImageNet weights through torchvision's weights API, tested offline: a file is put where the cache looks."""

import json
import os
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image
from support.helpers import invoke, one_error_line
from torchvision.models import AlexNet_Weights

WEIGHTS = AlexNet_Weights.IMAGENET1K_V1


@pytest.fixture
def no_network(monkeypatch):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch, no_network):
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def cached_weights(torch_home):
    """Random weights in torchvision's layout, where torchvision's cache looks for IMAGENET1K_V1."""
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    path = torch_home / "hub" / "checkpoints" / os.path.basename(WEIGHTS.url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return reference


@pytest.fixture
def photo(tmp_path):
    """A non-square image, so that the resize and the centre crop both matter."""
    torch.manual_seed(1)
    pixels = (torch.rand(300, 400, 3) * 255).to(torch.uint8).numpy()
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_predict_pretrained_matches_torchvisions_own_pipeline(runner, cached_weights, photo):
    result = invoke(runner, ["predict", str(photo), "--pretrained", "--json", "--workers", "0", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    (ours,) = json.loads(result.stdout)

    with torch.no_grad():
        probabilities = cached_weights(WEIGHTS.transforms()(Image.open(photo).convert("RGB"))[None]).softmax(1)[0]
    top = probabilities.topk(5)
    categories = WEIGHTS.meta["categories"]
    assert [item["label"] for item in ours["top_k"]] == [categories[i] for i in top.indices]
    for item, expected in zip(ours["top_k"], top.values.tolist()):
        assert item["probability"] == pytest.approx(expected, abs=1e-5)


def test_offline_without_the_file_names_the_cache_path(runner, torch_home, photo):
    result = invoke(runner, ["predict", str(photo), "--pretrained"])
    assert result.exit_code == 4
    expected = str(torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_summary_pretrained(runner, cached_weights):
    data = json.loads(invoke(runner, ["summary", "--pretrained", "--json"]).stdout)
    assert (data["arch"], data["num_classes"], data["image_size"]) == ("alexnet-torchvision", 1000, 224)
    assert data["class_names"][0] == "tench" and data["total_params"] == 61_100_840


@pytest.mark.whole_machine
def test_finetune_with_frozen_features_changes_only_the_classifier(runner, cached_weights, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--pretrained", "--freeze-features", "--epochs", "1",
                             "--image-size", "63", "--batch-size", "8", "--workers", "0", "--lr", "1e-3",
                             "--output", "run"])
    assert result.exit_code == 0, result.output
    checkpoint = torch.load("run/last.pt", weights_only=True)
    assert checkpoint["arch"] == "alexnet-torchvision" and checkpoint["config"]["freeze_features"] is True
    trained, original = checkpoint["model"], cached_weights.state_dict()
    for name, tensor in trained.items():
        if name.startswith("features."):
            assert torch.equal(tensor, original[name]), f"{name} changed although frozen"
    assert not torch.equal(trained["classifier.1.weight"], original["classifier.1.weight"])
    assert trained["classifier.6.weight"].shape == (2, 4096)  # a new head sized to the data's classes

    summary = json.loads(invoke(runner, ["summary", "--weights", "run/last.pt", "--json"]).stdout)
    features = sum(t.numel() for n, t in trained.items() if n.startswith("features."))
    assert summary["frozen_params"] == features


def test_pretrained_needs_the_torchvision_layout(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--pretrained", "--arch", "alexnet"])
    assert result.exit_code == 2 and "--pretrained needs --arch alexnet-torchvision" in result.stderr
    result = invoke(runner, ["train", str(shapes / "train"), "--freeze-features"])
    assert result.exit_code == 2 and "use it with --pretrained" in result.stderr


def test_lr_find_takes_the_runtime_options_that_train_takes(runner, cached_weights, shapes):
    """lr-find takes --pretrained, --no-cuda, --precision, --workers and --cache as train does."""
    result = invoke(runner, ["lr-find", str(shapes / "train"), "--pretrained", "--image-size", "67", "--steps", "3",
                             "--batch-size", "4", "--no-cuda", "--precision", "fp32", "--workers", "0",
                             "--cache", "off"])
    assert result.exit_code == 0, result.output
    assert "precision: fp32" in result.stderr and "suggested --lr" in result.stderr


def _imagenet_tree(root, with_images: dict[int, int]) -> list[str]:
    """1,000 WordNet-ID folders in ImageNet's order (its first and last IDs are real, the rest made up but sorted
    between them), with random images in the folders of `with_images` (position -> count)."""
    wnids = ["n01440764", *[f"n0150{i:04d}" for i in range(998)], "n15075141"]
    torch.manual_seed(2)
    for position, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for i in range(with_images.get(position, 0)):
            pixels = (torch.rand(180, 240, 3) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / wnid / f"{i}.jpg", quality=90)
    return wnids


def test_evaluate_pretrained_maps_imagenets_classes_to_wordnet_folders(runner, cached_weights, tmp_path):
    """The 1,000 folders in their order are the 1,000 outputs: evaluate's accuracy equals torchvision's own
    pipeline image by image, and its names are torchvision's."""
    images_in = {0: 2, 7: 2, 500: 2, 999: 2}
    wnids = _imagenet_tree(tmp_path / "val", images_in)
    result = invoke(runner, ["evaluate", str(tmp_path / "val"), "--pretrained", "--json", "--workers", "0",
                             "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 8 and report["class_folders"] == wnids
    assert report["class_names"] == WEIGHTS.meta["categories"]

    categories, mistakes, right = WEIGHTS.meta["categories"], {}, 0
    with torch.no_grad():
        for position in images_in:
            for path in sorted((tmp_path / "val" / wnids[position]).iterdir()):
                predicted = int(cached_weights(WEIGHTS.transforms()(Image.open(path).convert("RGB"))[None]).argmax())
                right += predicted == position
                if predicted != position:
                    pair = (categories[position], categories[predicted])
                    mistakes[pair] = mistakes.get(pair, 0) + 1
    assert report["accuracy"] == pytest.approx(right / 8)
    assert {(cell["true"], cell["predicted"]): cell["count"] for cell in report["most_confused"]} == mistakes
    assert mistakes  # random weights: the cells compared are not all empty


def test_evaluate_pretrained_refuses_folders_that_are_not_imagenets(runner, cached_weights, tmp_path, shapes):
    result = invoke(runner, ["evaluate", str(shapes / "val"), "--pretrained"])
    assert result.exit_code == 3, result.output
    assert "class folders are not ImageNet's WordNet IDs (circle, square)" in one_error_line(result)

    wnids = _imagenet_tree(tmp_path / "in" / "val", {3: 1})
    for wnid in wnids[10:]:
        (tmp_path / "in" / "val" / wnid).rmdir()
    result = invoke(runner, ["evaluate", str(tmp_path / "in" / "val"), "--pretrained"])
    assert result.exit_code == 3 and "has 10 of ImageNet's 1,000 class folders and no class_names.json" in \
        one_error_line(result)

    # With class_names.json beside it, as `alexnet data imagenet` writes it, ten folders are enough.
    (tmp_path / "in" / "class_names.json").write_text(json.dumps({wnid: [f"name {i}"] for i, wnid in enumerate(wnids)}))
    result = invoke(runner, ["evaluate", str(tmp_path / "in" / "val"), "--pretrained", "--json", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 1

    result = invoke(runner, ["evaluate", str(tmp_path / "in" / "val"), "--pretrained", "--weights", "x.pt"])
    assert result.exit_code == 2 and "without --weights or --run" in one_error_line(result)
