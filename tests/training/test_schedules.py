"""The learning-rate schedule across a resume: bit for bit when a run goes on as planned, and, when a finished
run is extended, the rate a run planned for the new length has at each epoch (never the old plan's last rate,
nor one no schedule gives)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from support.helpers import FAST_TRAIN, invoke

SCHEDULES = {
    "none": ["--scheduler", "none"],
    "step": ["--scheduler", "step"],
    "cosine": ["--scheduler", "cosine"],
    "warm-up and cosine": ["--scheduler", "cosine", "--warmup-epochs", "1"],
}
# E, extended to 2E: 1 -> 2 as a new user tries it, and 2 -> 4 where a warm-up needs an epoch after it.
EPOCHS = {"none": 1, "step": 1, "cosine": 1, "warm-up and cosine": 2}


def _lrs(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_extending_a_run_follows_the_schedule_of_a_run_planned_for_the_new_length(runner, shapes, schedule):
    epochs = EPOCHS[schedule]
    args = ["train", str(shapes / "train"), *FAST_TRAIN, "--lr", "1e-3", *SCHEDULES[schedule]]
    assert invoke(runner, [*args, "--epochs", str(2 * epochs), "--output", "straight"]).exit_code == 0
    assert invoke(runner, [*args, "--epochs", str(epochs), "--output", "extended"]).exit_code == 0
    resumed = invoke(runner, ["train", "--resume", "extended/last.pt", "--epochs", str(2 * epochs), "--workers",
                              "0"])
    assert resumed.exit_code == 0, resumed.output
    straight, extended = _lrs(Path("straight")), _lrs(Path("extended"))
    assert len(extended) == 2 * epochs
    assert extended[epochs:] == straight[epochs:]  # each new epoch's first-step rate, to the bit
    assert all(math.isfinite(lr) and lr > 0 for lr in extended)  # no epoch at a rate of 0
    if schedule != "none":
        line = next(line for line in resumed.stderr.splitlines() if line.startswith("extending the run"))
        assert f"from {epochs} to {2 * epochs} epochs" in line and f"planned for {2 * epochs}" in line
    else:
        assert "extending the run" not in resumed.stderr  # a constant rate has no plan to change


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_run_stopped_inside_an_epoch_resumes_on_its_schedule_bit_for_bit(shapes, tmp_path, schedule):
    """Stopped inside epoch 2 (as SIGTERM stops it: between two steps, last.pt saved with the epoch's
    progress) and resumed with the same --epochs: the same weights, rates and metrics as a straight run."""
    from support.helpers import TEST_ARCH, StopAfterEpoch

    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.training import TrainingInterrupted, fit

    options = dict(zip(SCHEDULES[schedule][::2], SCHEDULES[schedule][1::2]))
    settings = dict(data=shapes / "train", epochs=2, arch=TEST_ARCH, image_size=67, batch_size=4, workers=0,
                    lr=1e-3, scheduler=options.get("--scheduler", "none"),
                    warmup_epochs=int(options.get("--warmup-epochs", 0)))
    fit(TrainConfig(**settings, output=tmp_path / "straight"), SilentObserver())
    with pytest.raises(TrainingInterrupted):
        fit(TrainConfig(**settings, output=tmp_path / "stopped"), StopAfterEpoch())
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["partial"]["epoch"] == 2
    fit(TrainConfig(resume=tmp_path / "stopped" / "last.pt", workers=0), SilentObserver())
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert _lrs(tmp_path / "straight") == _lrs(tmp_path / "stopped")
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]


def test_another_number_of_processes_resumes_at_the_same_share_of_the_images(shapes):
    """A run saved by 2 processes resumed by 1: the schedule stands at the start of the next epoch in this
    run's steps (each of which now takes twice the images), not at the other run's step count."""
    from support.helpers import TEST_ARCH

    from alexnet_cli.artifacts.checkpoint import TrainingState
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.runtime.context import resolve_runtime
    from alexnet_cli.runtime.distributed import SINGLE, Dist
    from alexnet_cli.training.state import TrainingParts, lr_factor

    cfg = TrainConfig(data=shapes / "train", arch=TEST_ARCH, image_size=67, batch_size=4, workers=0,
                      scheduler="cosine", epochs=4)
    runtime = resolve_runtime("cpu", False, "fp32", 0)
    parts = TrainingParts.build(cfg, 2, runtime, 4, SINGLE, steps_per_epoch=4)
    saved = TrainingState(epoch=2, optimizer=parts.optimizer.state_dict(), scheduler={"last_epoch": 4},
                          scaler=None, rng={}, run_state={}, metrics=None, config={"world_size": 2, "epochs": 4})
    assert parts.schedule_step(saved, 2, Dist(world_size=2)) == 4  # as many processes: the saved count
    step = parts.schedule_step(saved, 2, SINGLE)
    assert step == 8  # 2 epochs done, at this run's 4 steps an epoch
    parts.follow_schedule(step)
    factor = lr_factor(8, scheduler="cosine", epochs=4, steps_per_epoch=4, warmup_epochs=0)
    assert parts.lr() == pytest.approx(cfg.effective_lr * factor) and factor == pytest.approx(0.5)
