"""torchrun: two gloo processes on the CPU train as one, rank 0 alone writes, and a failing rank stops all."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.helpers import SMALL, env_without_debug, invoke

from alexnet_cli.data.sources.synthetic import make_shapes_folder
from alexnet_cli.runtime.distributed import Dist, eval_shard, from_env, train_shard

TIMEOUT = 240


def _torchrun(nproc: int) -> list[str]:
    # This interpreter's torchrun: the first on PATH may belong to another Python (a pyenv shim, say).
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    base = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
    return [*base, "--standalone", f"--nproc_per_node={nproc}"]


def _launch(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**env_without_debug(), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def tiny(tmp_path) -> Path:
    """16 training images (2 classes) and an odd 5 validation images, so that sharding pads."""
    root = tmp_path / "data"
    make_shapes_folder(root / "train", classes=("circle", "square"), per_class=8, size=72, seed=3)
    make_shapes_folder(root / "val", classes=("circle", "square"), per_class=3, size=72, seed=4)
    (root / "val" / "square" / "square_0002.png").unlink()
    return root


TRAIN = ["train", "data/train", "--val", "data/val", *SMALL, "--workers", "0", "--device", "cpu",
         "--precision", "fp32"]


def test_shards_cover_every_image_and_validation_counts_each_once():
    for n in (5, 16, 17):
        for world in (1, 2, 3):
            shards = [eval_shard(n, Dist(world, rank)) for rank in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(n))
            train = [train_shard(n, 7, 2, Dist(world, rank)) for rank in range(world)]
            assert len({len(t) for t in train}) == 1  # equal shares: every rank takes every step
            assert {i for t in train for i in t} == set(range(n))
    # Two ranks at batch B see, step by step, one process's batch of 2B.
    whole = train_shard(16, 1, 1, Dist(1, 0))
    halves = [train_shard(16, 1, 1, Dist(2, rank)) for rank in (0, 1)]
    for step in range(2):
        assert sorted(whole[8 * step: 8 * step + 8]) == sorted(halves[0][4 * step: 4 * step + 4]
                                                              + halves[1][4 * step: 4 * step + 4])


def test_launch_environment_is_read_and_checked():
    assert not from_env({}).enabled
    dist = from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert dist.enabled and not dist.is_main and dist.local_rank == 1
    from alexnet_cli.errors import ConfigError

    with pytest.raises(ConfigError):
        from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_device_index_under_torchrun_is_a_clear_error(runner, tiny, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = invoke(runner, ["train", "data/train", "--device", "cuda:1"])
    assert result.exit_code == 2
    assert "LOCAL_RANK" in result.stderr and "rank 0 of 2" in result.stderr


def _alexnet_script() -> list[str]:
    """The installed `alexnet` script (what `$(which alexnet)` is in a venv), else `-m alexnet_cli`."""
    import sysconfig

    script = Path(sysconfig.get_path("scripts")) / "alexnet"
    return [str(script)] if script.is_file() else ["-m", "alexnet_cli"]


@pytest.mark.whole_machine
def test_torchrun_two_processes_index_the_data_once_and_write_one_run_that_loads_in_plain_evaluate(
        runner, tiny, tmp_path):
    # torchrun runs the installed script, as users start it; the other launches here use -m alexnet_cli.
    checks = tmp_path / "checks.log"  # one "pid path" line per file the index opens (tests/support/sitecustomize)
    result = _launch([*_torchrun(2), *_alexnet_script(), *TRAIN, "--epochs", "2", "--batch-size", "4"], tmp_path,
                     env={"ALEXNET_TEST_CHECKS_LOG": str(checks)})
    assert result.returncode == 0, result.stderr[-3000:]
    # The tree is read once: local rank 0 checked each of the 21 files, and rank 1 read its index.
    opened = [line.split(" ", 1) for line in checks.read_text().splitlines()]
    assert sorted(path for _, path in opened) == sorted(str(p.relative_to(tmp_path)) for p in tiny.rglob("*.png"))
    assert len({pid for pid, _ in opened}) == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["train-1"]  # one folder, by rank 0
    run = tmp_path / "runs" / "train-1"
    assert {"best.pt", "last.pt", "metrics.csv", "config.json"} <= {p.name for p in run.iterdir()}
    rows = _metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(int(r["val_images"]) == 5 for r in rows)  # every validation image once, padding dropped
    assert result.stderr.count("run folder:") == 1  # only rank 0 talks
    assert "2 processes, batch 4 each: 8 images per step" in result.stderr
    assert "Epoch [2/2], Iter [2/2] Loss:" in result.stderr  # 16 images / (2 x 4) = 2 steps per epoch

    evaluated = invoke(runner, ["evaluate", "data/val", "--weights", str(run / "best.pt"), "--workers", "0",
                                "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    import json

    report = json.loads(evaluated.stdout)
    assert report["images"] == 5
    assert report["accuracy"] == pytest.approx(float(rows[-1]["val_acc"])) or report["accuracy"] == pytest.approx(
        max(float(r["val_acc"]) for r in rows))

    # The 2-process run resumes as one process (this one), and goes on in the same run folder.
    resumed = invoke(runner, ["train", "--resume", str(run / "last.pt"), "--epochs", "3", "--workers", "0",
                              "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stderr and "at epoch 3 of 3" in resumed.stderr
    rows = _metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[-1]["val_images"] == "5"


@pytest.mark.whole_machine
def test_torchrun_ranks_start_loader_processes_under_spawn(tiny, tmp_path):
    """Each rank sets the spawn start method first (as on macOS and Windows), through a sitecustomize.py, and
    loads with one loader process from the shared decoded-image cache."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import alexnet_test_arch, multiprocessing, os, sys\n"
        "if 'RANK' in os.environ:\n"
        "    multiprocessing.set_start_method('spawn')\n"
        "    print(f\"rank {os.environ['RANK']} starts loaders by {multiprocessing.get_start_method()}\", "
        "file=sys.stderr)\n"
    )
    pythonpath = os.pathsep.join([str(hook), env_without_debug()["PYTHONPATH"]])  # the suite's, after the hook
    args = [arg if arg != "0" else "1" for arg in TRAIN]  # --workers 1
    result = _launch([*_torchrun(2), "-m", "alexnet_cli", *args, "--epochs", "1", "--batch-size", "4"], tmp_path,
                     env={"PYTHONPATH": pythonpath})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 starts loaders by spawn" in result.stderr and "rank 1 starts loaders by spawn" in result.stderr
    assert "cache: 21 images decoded once" in result.stderr and "cannot start" not in result.stderr
    rows = _metrics(tmp_path / "runs" / "train-1")
    assert [int(r["epoch"]) for r in rows] == [1] and rows[0]["val_images"] == "5"


@pytest.mark.whole_machine
def test_two_processes_at_batch_b_train_like_one_at_batch_2b(tiny, tmp_path, runner):
    # With an EMA (each rank averages the same weights: validation runs on the average), a warm-up and cosine
    # stepped per iteration, and balanced draws shared out between the ranks.
    common = [*TRAIN, "--epochs", "2", "--dropout", "0", "--ema", "0.5", "--warmup-epochs", "1", "--scheduler",
              "cosine", "--balanced-sampler"]
    one = invoke(runner, [*common, "--batch-size", "8", "--output", "one"])  # one process: this one
    assert one.exit_code == 0, one.output
    two = _launch([*_torchrun(2), "-m", "alexnet_cli", *common, "--batch-size", "4", "--output", "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), strict=True):
        for column in ("train_loss", "val_loss"):
            assert float(b[column]) == pytest.approx(float(a[column]), rel=1e-3, abs=1e-4), (column, a, b)
        assert a["val_images"] == b["val_images"] == "5"


@pytest.mark.whole_machine
def test_a_failing_rank_stops_the_whole_launch_with_its_error(tiny, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import alexnet_test_arch, os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import alexnet_cli.training.loop as loop\n"
        "    original, calls = loop.train_step, []\n"
        "    def failing(*args, **kwargs):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 2:\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "        return original(*args, **kwargs)\n"
        "    loop.train_step = failing\n"
    )
    pythonpath = os.pathsep.join([str(hook), env_without_debug()["PYTHONPATH"]])  # the suite's, after the hook
    started = time.monotonic()
    result = _launch([*_torchrun(2), "-m", "alexnet_cli", *TRAIN, "--epochs", "3", "--batch-size", "2"], tmp_path,
                     env={"PYTHONPATH": pythonpath})
    assert time.monotonic() - started < TIMEOUT
    assert result.returncode != 0
    assert "error: rank 1 of 2: unexpected RuntimeError: injected failure on rank 1" in result.stderr
    assert "Traceback" not in result.stderr.split("injected failure on rank 1")[0]


@pytest.mark.parametrize("nccl", [True, False])
def test_nccl_only_where_torch_has_it(monkeypatch, nccl):
    """Windows wheels have no NCCL: CUDA ranks then talk over gloo instead of failing to start."""
    import torch
    import torch.distributed as td

    from alexnet_cli.runtime import distributed as distmod

    monkeypatch.setattr(td, "is_nccl_available", lambda: nccl)
    started = []
    monkeypatch.setattr(td, "init_process_group", lambda backend, **kwargs: started.append((backend, kwargs)))
    monkeypatch.setattr(td, "barrier", lambda: started.append("together"))
    monkeypatch.setattr(td, "destroy_process_group", lambda: started.append("left"))
    cuda = torch.device("cuda", 1)
    with distmod.process_group(Dist(2, 1, 1, 2), cuda):
        pass
    expected = ("nccl", {"device_id": cuda}) if nccl else ("gloo", {})
    assert started == [expected, "together", "left"]  # every rank leaves together, then the group goes
    started.clear()
    with pytest.raises(RuntimeError), distmod.process_group(Dist(2, 1, 1, 2), cuda):
        raise RuntimeError("a rank failed")
    assert started == [expected, "left"]  # after an error no rank waits for the others
    assert distmod.backend_for(torch.device("cpu")) == "gloo"
