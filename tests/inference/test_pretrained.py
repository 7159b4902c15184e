"""ImageNet weights through torchvision's weights API, tested offline: a file is put where the cache looks."""

import json
import os
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image
from support.helpers import invoke
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
