import json
import sys

import pytest
import torch
from support.helpers import TEST_ARCH, invoke

from alexnet_cli.artifacts.checkpoint import Checkpoint, load_checkpoint
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.models.alexnet import build_model


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(TEST_ARCH, num_classes=3)
    path = tmp_path / "best.pt"
    Checkpoint(arch=TEST_ARCH, class_names=("cat", "dog", "fox"), preprocess=Preprocess(image_size=67, resize_size=76),
               dropout=0.5, state_dict=model.state_dict()).save(path)
    return path


def reference(checkpoint_path, batch):
    with torch.no_grad():
        return load_checkpoint(checkpoint_path).build()(batch).softmax(1)


def test_torchscript_export_agrees_with_pytorch(runner, checkpoint, tmp_path):
    result = invoke(runner, ["export", "--weights", str(checkpoint), "--format", "torchscript", "--output", "model.pt"])
    assert result.exit_code == 0, result.output
    assert "largest difference" in result.stderr
    loaded = torch.jit.load("model.pt")
    batch = torch.randn(3, 3, 67, 67)
    assert torch.allclose(loaded(batch), reference(checkpoint, batch), atol=1e-4)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "fox"]
    assert meta["preprocess"]["image_size"] == 67 and meta["output"]["name"] == "probabilities"


def test_onnx_export_agrees_with_pytorch(runner, checkpoint, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = invoke(runner, ["export", "--weights", str(checkpoint), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    exported = tmp_path / "best.onnx"
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    batch = torch.randn(5, 3, 67, 67)  # another batch size than the export's sample: the batch axis is dynamic
    (probabilities,) = session.run(["probabilities"], {"image": batch.numpy()})
    assert torch.allclose(torch.from_numpy(probabilities), reference(checkpoint, batch), atol=1e-4)
    assert json.loads((tmp_path / "best.json").read_text())["format"] == "onnx"


def test_onnx_without_the_extra_says_how_to_get_it(runner, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = invoke(runner, ["export", "--weights", str(checkpoint), "--format", "onnx"])
    assert result.exit_code == 2
    assert "pip install 'alexnet-cli[export]'" in result.stderr


def test_unknown_format(runner, checkpoint):
    result = invoke(runner, ["export", "--weights", str(checkpoint), "--format", "tflite"])
    assert result.exit_code == 2 and "unknown export format" in result.stderr
