import json

import pytest
import torch
import torchvision
from support.helpers import invoke

from alexnet_cli.models.summary import size_arithmetic, summarize

WRITEUP_SHAPES = [
    [96, 55, 55], [96, 27, 27], [256, 27, 27], [256, 13, 13], [384, 13, 13], [384, 13, 13],
    [256, 13, 13], [256, 6, 6], [9216], [4096], [4096], [2],
]


def test_default_summary_prints_the_writeups_shapes(runner):
    result = invoke(runner, ["summary"])
    assert result.exit_code == 0
    shown = [line.split()[2] for line in result.stderr.splitlines()
             if line.split() and line.split()[0] in {"conv1", "conv2", "conv3", "conv4", "conv5", "pool1", "pool2",
                                                     "pool3", "flatten", "fc6", "fc7", "fc8"}]
    assert shown == ["x".join(map(str, s)) for s in WRITEUP_SHAPES]
    assert "(227 - 11 + 2*0)/4 + 1 = 55" in result.stderr
    assert "58,289,538" in result.stderr


def test_summary_json(runner):
    result = invoke(runner, ["summary", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["total_params"] == 58_289_538
    assert [layer["output_shape"] for layer in data["layers"]] == WRITEUP_SHAPES
    assert data["layers"][0]["arithmetic"] == "(227 - 11 + 2*0)/4 + 1 = 55"


@pytest.mark.parametrize(
    ("args", "params"),
    [
        (["--num-classes", "1000"], 62_378_344),
        (["--arch", "alexnet-paper", "--num-classes", "1000"], 60_965_224),
        (["--arch", "alexnet-torchvision", "--num-classes", "1000"], 61_100_840),
    ],
)
def test_summary_totals(runner, args, params):
    data = json.loads(invoke(runner, ["summary", "--json", *args]).stdout)
    assert data["total_params"] == params
    assert data["trainable_params"] == params and data["frozen_params"] == 0
    assert data["param_bytes"] == 4 * params


def test_paper_neurons_and_torchvision_macs():
    paper = summarize("alexnet-paper", 1000, 227)
    assert paper["activations"] == 659_272  # the paper's "650,000 neurons"
    tv = summarize("alexnet-torchvision", 1000, 224)
    assert tv["macs"] == pytest.approx(0.714e9, rel=1e-3)
    assert tv["flops"] == 2 * tv["macs"]
    assert sum(layer["macs"] for layer in tv["layers"]) == tv["macs"]


def test_size_arithmetic_marks_floors():
    assert size_arithmetic(227, 11, 4, 0) == "(227 - 11 + 2*0)/4 + 1 = 55"
    assert size_arithmetic(224, 11, 4, 2) == "⌊(224 - 11 + 2*2)/4⌋ + 1 = 55"


def test_summary_at_another_size_shows_the_adaptive_pool(runner):
    data = json.loads(invoke(runner, ["summary", "--json", "--image-size", "300"]).stdout)
    names = [layer["name"] for layer in data["layers"]]
    assert "avgpool" in names
    assert data["layers"][names.index("avgpool")]["output_shape"] == [256, 6, 6]


def test_summary_rejects_too_small_input(runner):
    result = invoke(runner, ["summary", "--image-size", "66"])
    assert result.exit_code == 2
    assert "minimum is 67" in result.stderr
    assert "Traceback" not in result.output


def test_summary_from_checkpoint(runner, tmp_path):
    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.models.alexnet import build_model

    model = build_model("alexnet-paper", num_classes=3)
    path = tmp_path / "paper.pt"
    Checkpoint(arch="alexnet-paper", class_names=("a", "b", "c"), preprocess=Preprocess(image_size=99, resize_size=112),
               dropout=0.5, state_dict=model.state_dict()).save(path)
    data = json.loads(invoke(runner, ["summary", "--json", "--weights", str(path)]).stdout)
    assert (data["arch"], data["num_classes"], data["image_size"]) == ("alexnet-paper", 3, 99)
    assert data["class_names"] == ["a", "b", "c"]


def test_summary_from_torchvision_state_dict(runner, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.alexnet(num_classes=10).state_dict(), path)
    data = json.loads(invoke(runner, ["summary", "--json", "--weights", str(path)]).stdout)
    assert (data["arch"], data["num_classes"], data["image_size"]) == ("alexnet-torchvision", 10, 224)
