"""Checkpoints written while the next epoch trains (writer.py): the snapshot holds still, a signal or a kill
while a write is in flight loses nothing, and a write that fails stops the run with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from support.helpers import FAST_TRAIN, SMALL, built_once, env_without_debug, invoke, one_error_line

from alexnet_cli.artifacts import checkpoint as checkpoint_mod
from alexnet_cli.artifacts import run_folder as runs
from alexnet_cli.artifacts.background import CheckpointWriter, copy_containers
from alexnet_cli.runtime import files


def test_the_optimizer_step_waits_until_the_write_has_read_the_weights():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    writer = CheckpointWriter()
    writer.guard(optimizer)
    before = model.weight.detach().clone()
    seen = []

    def job(serialised, warn):
        time.sleep(0.3)  # a slow disk: the step below must not run before the weights are read
        seen.append(model.weight.detach().clone())
        serialised()
        warn("a note from the writer")

    writer.submit(job, print)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()
    notes = []
    writer.wait(notes.append)
    assert torch.equal(seen[0], before) and not torch.equal(model.weight, before)
    assert writer.waits[0] >= 0.2 and notes == ["a note from the writer"]


def test_a_write_error_is_raised_on_the_training_thread():
    writer = CheckpointWriter()

    def job(serialised, warn):
        raise checkpoint_mod.CheckpointError("could not write last.pt: No space left on device")

    writer.submit(job, print)
    with pytest.raises(checkpoint_mod.CheckpointError, match="No space left"):
        writer.wait_serialised()
    writer.wait(print)  # raised once


def test_containers_are_copied_and_tensors_shared():
    weight = torch.zeros(2)
    payload = {"model": {"w": weight}, "history": [{"epoch": 1}]}
    copy = copy_containers(payload)
    payload["history"].append({"epoch": 2})
    payload["model"]["w2"] = weight
    assert copy == {"model": {"w": weight}, "history": [{"epoch": 1}]} and copy["model"]["w"] is weight


def test_a_full_disk_during_a_background_write_stops_the_run_with_exit_4(runner, shapes, monkeypatch):
    real_save, real_fdopen, calls = runs.save_checkpoint, os.fdopen, []

    class FullDisk:
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 2**20:
                raise OSError(28, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def second_fails(path, payload, serialised=None):
        calls.append(path)
        if len(calls) == 2:
            monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
        real_save(path, payload, serialised)

    monkeypatch.setattr(runs, "save_checkpoint", second_fails)
    result = invoke(runner, ["train", str(shapes / "train"), *FAST_TRAIN, "--epochs", "3", "--output", "run"])
    assert result.exit_code == 7, result.output
    assert "could not write run/last.pt: No space left on device" in one_error_line(result)
    assert torch.load("run/last.pt", weights_only=True)["epoch"] == 1  # epoch 1's, whole
    assert not [name for name in os.listdir("run") if name.endswith(".tmp")]  # no temp file left


# A training process whose second checkpoint (epoch 2's) stays in flight for two seconds after it was
# serialised, as on a slow disk: the parent signals it while epoch 3 trains (its steps slowed to 0.2 s each by
# support/sitecustomize.py, so that the signal lands inside epoch 3 and not after it).
SLOW_SECOND_WRITE = r"""
import sys, time
import alexnet_cli.artifacts.run_folder as runs
real, calls = runs.save_checkpoint, []
def save(path, payload, serialised=None):
    calls.append(path)
    if len(calls) != 2:
        return real(path, payload, serialised)
    def slow():
        serialised()
        print("write in flight", file=sys.stderr, flush=True)
        time.sleep(2)
    real(path, payload, slow)
runs.save_checkpoint = save
from alexnet_cli.cli import main
sys.argv = ["alexnet", *sys.argv[1:]]
main()
"""


def _train(data, output: str) -> list[str]:
    return ["train", str(data), "--epochs", "3", *SMALL, "--batch-size", "4", "--workers", "0",
            "--device", "cpu", "--precision", "fp32", "--output", output]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same 3 epochs never stopped, to compare with."""
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    def build(root) -> None:
        make_shapes_folder(root / "train", classes=("circle", "square"), per_class=6, size=80, seed=1)
        result = subprocess.run([sys.executable, "-m", "alexnet_cli", *_train(root / "train", "straight")],
                                cwd=root, capture_output=True, text=True, timeout=300, env=env_without_debug())
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "in-flight", build)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_while_a_write_is_in_flight_loses_nothing_and_resume_is_exact(straight, sig, runner, monkeypatch):
    root, name = straight, f"stopped-{sig.name}"
    process = subprocess.Popen([sys.executable, "-c", SLOW_SECOND_WRITE, *_train(root / "train", name)],
                               cwd=root, stderr=subprocess.PIPE, text=True,
                               env={**env_without_debug(), "ALEXNET_TEST_STEP_SECONDS": "0.2"})
    for line in process.stderr:
        if "write in flight" in line:
            process.send_signal(sig)
            break
    rest = process.stderr.read()
    expected = 128 + sig if sig == signal.SIGTERM else -sig
    assert process.wait(timeout=300) == expected, rest
    saved = torch.load(root / name / "last.pt", weights_only=True)
    if sig == signal.SIGTERM:  # epoch 2's write finished first; then the stop inside epoch 3 was saved
        assert saved["epoch"] == 2 and saved["partial"]["epoch"] == 3, rest
    else:  # killed before epoch 2's rename: epoch 1's file, whole
        assert saved["epoch"] == 1 and saved["partial"] is None
    # The resume needs no process of its own: it goes on in this one, in the stopped run's folder.
    monkeypatch.chdir(root)
    resumed = invoke(runner, ["train", "--resume", f"{name}/last.pt", "--precision", "fp32", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(root / "straight" / "last.pt", weights_only=True)
    b = torch.load(root / name / "last.pt", weights_only=True)
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in
               zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()))


def test_threads_left_after_training_are_none(runner, shapes):
    invoke(runner, ["train", str(shapes / "train"), *FAST_TRAIN, "--epochs", "1", "--output", "run"])
    assert not [t for t in threading.enumerate() if t.name == "alexnet-checkpoint"]
