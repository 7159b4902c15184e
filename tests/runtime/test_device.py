import pytest
import torch
from support.helpers import invoke

from alexnet_cli.errors import ConfigError, DeviceError
from alexnet_cli.runtime.device import resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")
    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    return selected


def test_auto_falls_back_to_cpu_and_says_why(no_gpu):
    choice = resolve_device("auto")
    assert choice.device == torch.device("cpu")
    assert "no CUDA or MPS" in choice.reason


def test_auto_prefers_cuda(two_gpus):
    choice = resolve_device("auto")
    assert choice.device == torch.device("cuda", 0)
    assert "Fake GPU 0" in choice.reason


def test_no_cuda_skips_cuda(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    choice = resolve_device("auto", no_cuda=True)
    assert choice.device.type == "cpu"
    assert "--no-cuda" in choice.reason


def test_auto_then_mps(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").device.type == "mps"


def test_explicit_cuda_index(two_gpus):
    assert resolve_device("cuda:1").device == torch.device("cuda", 1)
    assert two_gpus == [1]  # cuda:1 becomes the current device: pinned memory and cuDNN go there too
    with pytest.raises(DeviceError, match="no GPU 2"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_missing_accelerator_is_a_clear_error(no_gpu, name):
    with pytest.raises(DeviceError, match="use --device cpu"):
        resolve_device(name)


def test_bad_names_and_contradictions():
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_device("cuda", no_cuda=True)


def test_cli_cuda_without_gpu_exits_cleanly(runner, shapes, no_gpu):
    result = invoke(runner, ["train", str(shapes / "train"), "--device", "cuda"])
    assert result.exit_code == 5
    assert result.stderr.strip().startswith("error: --device cuda asked for CUDA")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
