"""A fixed tiny run, pinned: the same seed and data give these losses, accuracies and weights, bit for bit.

The values were recorded from main before the engine was split into training/, evaluation.py and
prediction.py (alexnet-cli 0.1.0, torch 2.14.1), so any change to the order of random draws, the loop or the
checkpoint shows here. CPU kernels differ between instruction sets (AVX-512 or AVX2 round in other orders),
so the bit-exact part holds on the kind of CPU it was recorded on; elsewhere the metrics must agree to 1e-3.
"""

from __future__ import annotations

import csv
import hashlib

import pytest
import torch
from support.helpers import TINY, invoke

RECORDED_ON = ("AVX512", "GenuineIntel")  # cpu_kind() where GOLDEN was taken
GOLDEN = {
    "metrics": [
        ["1", "0.768546462059021", "0.4375", "0.6861083706219991", "0.5"],
        ["2", "0.7703810483217239", "0.4375", "0.6730332374572754", "0.5"],
    ],
    "weights_sha256": "fe8032b5099c6749382f54c8c84406764ddb6b9d8ebb821391fb8698041c05f5",
}


def cpu_kind() -> tuple[str, str]:
    """The vector instructions torch dispatches to, and the CPU's vendor (MKL takes other paths on AMD)."""
    vendor = ""
    try:
        with open("/proc/cpuinfo") as handle:
            vendor = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("vendor_id")), "")
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability(), vendor


def weights_digest(path) -> str:
    """sha256 over the model tensors of a checkpoint, by name: what a change to training would move."""
    model = torch.load(path, weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(model):
        digest.update(name.encode())
        digest.update(model[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def golden_run(runner, shapes) -> tuple[list[list[str]], str]:
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "2", "--image-size", str(TINY),
                             "--batch-size", "4", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                             "--seed", "7", "--output", "golden",
                             # the settings it was recorded with, which are no longer all the defaults
                             "--lr", "1e-4", "--scheduler", "none", "--warmup-epochs", "0", "--ema", "0"])
    assert result.exit_code == 0, result.output
    with open("golden/metrics.csv") as handle:
        metrics = [[row[c] for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")]
                   for row in csv.DictReader(handle)]
    return metrics, weights_digest("golden/best.pt")


@pytest.mark.whole_machine
def test_the_golden_run_is_unchanged(runner, shapes):
    metrics, digest = golden_run(runner, shapes)
    # And the file is the schema, key for key (docs/checkpoint-format.md is held to the same keys).
    from alexnet_cli.artifacts.checkpoint import Checkpoint, load_checkpoint

    assert tuple(torch.load("golden/last.pt", weights_only=True)) == Checkpoint.payload_keys()
    assert load_checkpoint("golden/best.pt").training.epoch in (1, 2)
    if cpu_kind() == RECORDED_ON:
        assert metrics == GOLDEN["metrics"]
        assert digest == GOLDEN["weights_sha256"]
    else:
        for row, expected in zip(metrics, GOLDEN["metrics"], strict=True):
            assert [float(v) for v in row] == pytest.approx([float(v) for v in expected], rel=1e-3, abs=1e-4)
