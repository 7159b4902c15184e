"""The fast path: --precision, channels_last, fused optimizers, inference casting, and bf16 accuracy."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import TINY, invoke, one_error_line

from alexnet_cli import device as devmod
from alexnet_cli.device import Precision, resolve_precision
from alexnet_cli.runtime import prepare_for_inference, to_device
from alexnet_cli.training import make_optimizer, train_step
from alexnet_cli.errors import ConfigError, DeviceError
from alexnet_cli.models import build_model

CPU = torch.device("cpu")


def test_explicit_precisions_and_their_limits():
    assert resolve_precision("fp32", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).name == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def test_auto_on_a_cpu_uses_bf16_only_where_it_measured_faster(monkeypatch):
    chosen = resolve_precision("auto", CPU, speedup=1.9)
    assert chosen.name == "bf16" and "1.90x" in chosen.reason
    slow = resolve_precision("auto", CPU, speedup=0.54)
    assert slow.name == "fp32" and "native bf16, but it measured 0.54x" in slow.reason
    # Without native bf16 it does not even measure.
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: pytest.fail("measured"))
    assert resolve_precision("auto", CPU).reason == "auto: fp32 (this CPU has no native bf16)"
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: 1.5)
    assert resolve_precision("auto", CPU).name == "bf16"


def test_the_cpu_measurement_is_remembered_per_machine_and_torch_version(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: measured.append(1) or 0.54)
    first = resolve_precision("auto", CPU)
    assert first.name == "fp32" and "remembered" not in first.reason and len(measured) == 1
    again = resolve_precision("auto", CPU)  # as the next command would: no new measurement
    path = tmp_path / "user-cache" / devmod.SPEEDUP_FILE
    assert len(measured) == 1 and "0.54x" in again.reason and f"remembered in {path}" in again.reason
    assert "torch " + torch.__version__ in next(iter(json.loads(path.read_text())))
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch measures for itself
    resolve_precision("auto", CPU)
    assert len(measured) == 2 and len(json.loads(path.read_text())) == 2
    path.write_text("{not json")  # a damaged file is measured around, and rewritten
    resolve_precision("auto", CPU)
    assert len(measured) == 3 and json.loads(path.read_text())
    path.unlink()  # the documented way to measure again
    resolve_precision("auto", CPU)
    assert len(measured) == 4


def test_the_user_cache_folder_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("ALEXNET_CACHE_DIR")
    monkeypatch.setattr(devmod.Path, "home", lambda: tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert devmod.user_cache_dir() == tmp_path / "xdg" / "alexnet-cli"
    monkeypatch.setattr(devmod.sys, "platform", "darwin")
    assert devmod.user_cache_dir() == tmp_path / "Library" / "Caches" / "alexnet-cli"
    monkeypatch.setattr(devmod.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert devmod.user_cache_dir() == tmp_path / "local" / "alexnet-cli"


def test_the_cpu_measurement_is_a_real_ratio():
    ratio = devmod.measure_cpu_bf16_speedup(rounds=1)
    assert 0.05 < ratio < 20


@pytest.mark.parametrize("capability, auto", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_uses_bf16_only_with_bf16_units(monkeypatch, capability, auto):
    """torch.cuda.is_bf16_supported() says yes on a T4 (7.5) too, where bf16 is emulated and slower than fp16:
    the compute capability of the chosen GPU decides."""
    cuda = torch.device("cuda", 1)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    chosen = resolve_precision("auto", cuda)
    assert chosen.name == auto
    assert asked and all(device == cuda for device in asked)  # the chosen GPU, not the current one
    if auto == "fp16":
        with pytest.raises(DeviceError, match=rf"Some GPU \(compute capability {capability[0]}.{capability[1]}\) has no bf16"):
            resolve_precision("bf16", cuda)
    else:
        assert resolve_precision("bf16", cuda).name == "bf16"


def test_mps_stays_fp32_and_takes_bf16_only_from_macos_14(monkeypatch):
    mps = torch.device("mps")
    assert resolve_precision("auto", mps).name == "fp32"
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: (major, minor) <= (13, 6),
                        raising=False)
    with pytest.raises(DeviceError, match="MPS has bf16 from macOS 14"):
        resolve_precision("bf16", mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True, raising=False)
    assert resolve_precision("bf16", mps).name == "bf16"


def test_training_uses_fused_optimizers_and_keeps_fp32_master_weights_under_bf16():
    model = build_model("alexnet", num_classes=3).to(memory_format=torch.channels_last)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("adam", "sgd"):
        assert make_optimizer(name, model, lr=1e-4, weight_decay=0.0, device=CPU).defaults["fused"] is True
    optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=CPU)
    images = to_device(torch.randn(4, 3, TINY, TINY), CPU)
    assert images.is_contiguous(memory_format=torch.channels_last)
    before = model.classifier[-1].weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, logits = train_step(model, images, torch.tensor([0, 1, 2, 0]), optimizer, scaler,
                              torch.nn.CrossEntropyLoss(), Precision("bf16", "test"))
    assert torch.isfinite(loss) and logits.dtype == torch.bfloat16  # computed in bf16...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ...weights stay fp32
    assert not torch.equal(before, model.classifier[-1].weight)


def test_inference_casts_the_weights_rather_than_autocasting():
    model = prepare_for_inference(build_model("alexnet", num_classes=2), CPU, Precision("bf16", "test"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and not model.training
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    fp32 = prepare_for_inference(build_model("alexnet", num_classes=2), CPU, Precision("fp32", "test"))
    assert all(p.dtype == torch.float32 for p in fp32.parameters())


def test_precision_option_is_checked_and_reported(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--precision", "fp8"])
    assert result.exit_code == 2 and "unknown precision 'fp8'" in one_error_line(result)
    result = invoke(runner, ["predict", str(shapes / "val"), "--pretrained", "--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 2 and "fp16 needs a GPU" in one_error_line(result)
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--image-size", str(TINY), "--workers",
                             "0", "--batch-size", "8", "--precision", "bf16", "--output", "run"])
    assert result.exit_code == 0, result.output
    assert "precision: bf16 mixed precision (--precision bf16" in result.output
    evaluated = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--precision", "bf16",
                                "--workers", "0"])
    assert evaluated.exit_code == 0 and "precision: bf16" in evaluated.output


def test_bf16_training_reaches_fp32_accuracy_on_the_demo_data(tmp_path):
    """Tiny: two of the demo's textures (stripes, rings), 160 training and 64 validation images each, 4 epochs.

    Both runs use the same seed and data, and both train until they saturate (mid-training, accuracies that
    differ only by rounding drift apart by several points); their best validation accuracies must agree within
    2 points.
    bench/precision_accuracy.py is the full-size check (the whole demo data set, 8 epochs).
    """
    from alexnet_cli.config import TrainConfig
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.training import train
    from alexnet_cli.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "train", ("stripes", "rings"), 160, TINY, seed=0)
    make_shapes_folder(tmp_path / "val", ("stripes", "rings"), 64, TINY, seed=1)
    best = {}
    for precision in ("fp32", "bf16"):
        train(TrainConfig(data=tmp_path / "train", val=tmp_path / "val", image_size=TINY, epochs=4, batch_size=16,
                          workers=0, precision=precision, output=tmp_path / precision), SilentObserver())
        with open(tmp_path / precision / "metrics.csv") as handle:
            best[precision] = max(float(row["val_acc"]) for row in csv.DictReader(handle))
    assert min(best.values()) >= 0.95, best  # both learnt the task: chance is 0.5
    assert abs(best["bf16"] - best["fp32"]) <= 0.02, best
