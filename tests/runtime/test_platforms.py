"""Where users are: spawn and forkserver loader processes (macOS, Windows, Python 3.14), signals to a whole
process group, MPS without float64, Windows without os.fchmod or a UTF-8 stdout, containers with a memory
limit, and folders that Finder or Explorer have touched."""

from __future__ import annotations

import csv
import ctypes
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support.helpers import SMALL, TEST_ARCH, TINY, built_once, env_without_debug, invoke, make_shapes

from alexnet_cli.artifacts.checkpoint import Checkpoint, save_checkpoint
from alexnet_cli.data import cache as cachemod
from alexnet_cli.data import folders as datamod
from alexnet_cli.data import loading
from alexnet_cli.data.cache import ImageCache
from alexnet_cli.data.preprocess import Preprocess

# One process per call, its start method set before anything else, as on macOS/Windows (spawn) and on Linux
# from Python 3.14 (forkserver). Each args list is one `alexnet` command; a non-zero exit stops the script.
START_METHOD_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, sys
    multiprocessing.set_start_method(sys.argv[1])
    from alexnet_cli.cli import app
    for args in json.loads(sys.argv[2]):
        try:
            app(args)
        except SystemExit as exit:
            if exit.code:
                raise
""")
COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")


def _under_start_method(method: str, *commands: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", START_METHOD_SCRIPT, method, json.dumps(commands)],
                          capture_output=True, text=True, timeout=300, env=env_without_debug())


def _metrics(run: str) -> list[list[str]]:
    with open(Path(run) / "metrics.csv") as handle:
        return [[row[c] for c in COLUMNS] for row in csv.DictReader(handle)]


def _train_args(shapes: Path, output: str, *extra: str) -> list[str]:
    return ["train", str(shapes / "train"), "--epochs", "1", *SMALL, "--batch-size", "4",
            "--device", "cpu", "--precision", "fp32", "--output", output, *extra]


# ---------------------------------------------------------------------------------------- start methods


@pytest.fixture(scope="module")
def in_process_run(tmp_path_factory):
    """The shapes data and one epoch trained in this process, without loader processes: what every start
    method must reproduce."""
    from typer.testing import CliRunner

    def build(root: Path) -> None:
        make_shapes(root / "data")
        reference = invoke(CliRunner(), _train_args(root / "data", str(root / "in-process"), "--workers", "0"))
        assert reference.exit_code == 0, reference.output

    return built_once(tmp_path_factory, "start-methods", build)


@pytest.mark.whole_machine
@pytest.mark.parametrize("method, cache", [("fork", "auto"), ("spawn", "auto"), ("forkserver", "off")])
def test_training_is_the_same_run_under_each_start_method(in_process_run, method, cache):
    """Two loader processes under each start method train exactly what one process trains, the decoded-image
    cache included (its blocks go to spawned processes as shared memory)."""
    root = in_process_run
    run = _under_start_method(method, _train_args(root / "data", str(root / method), "--workers", "2", "--cache",
                                                  cache))
    assert run.returncode == 0, f"{method}: {run.stderr[-3000:]}"
    assert "cannot start" not in run.stderr and "Traceback" not in run.stderr
    assert _metrics(root / method) == _metrics(root / "in-process"), method


@pytest.mark.whole_machine
def test_evaluate_and_predict_under_spawn(runner, shapes, trained_run):
    # fp32: --precision auto measures bf16 in each process, and a noisy machine may decide either way.
    evaluate = ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--device", "cpu", "--precision", "fp32",
                "--json"]
    predict = ["predict", str(shapes / "val"), "--weights", "run/best.pt", "--device", "cpu", "--precision", "fp32",
               "--json"]
    expected_report = json.loads(invoke(runner, [*evaluate, "--workers", "0"]).stdout)
    expected_predictions = json.loads(invoke(runner, [*predict, "--workers", "0"]).stdout)

    spawned = _under_start_method("spawn", [*evaluate, "--workers", "2"], [*predict, "--workers", "2"])
    assert spawned.returncode == 0, spawned.stderr[-3000:]
    report, end = json.JSONDecoder().raw_decode(spawned.stdout)  # evaluate's object, then predict's list
    assert report == expected_report
    assert json.loads(spawned.stdout[end:]) == expected_predictions


def test_every_part_a_loader_process_receives_pickles(shapes):
    """What spawn sends: the dataset (transforms and cache included), the collate function and worker_init.
    Torch sends the cache's blocks as shared memory: the pickle stays small and the blocks become shared."""
    from multiprocessing.reduction import ForkingPickler

    from alexnet_cli.data.augment import Augmentation
    from alexnet_cli.data.preprocess import Chain

    preprocess = Preprocess.for_arch(TINY, 227)
    cache = ImageCache(preprocess, "ram")
    images = datamod.load_image_folder(shapes / "train")
    cache.fill([images], strict=True)
    dataset = loading.ImageDataset(images.paths, images.labels,
                                   Chain(preprocess.decode_transforms(), Augmentation().train_crop(preprocess)),
                                   cache=cache, from_cache=Augmentation().train_crop(preprocess))
    assert loading.why_not_picklable(dataset, loading.collate_readable, loading.worker_init) is None
    sent = ForkingPickler.dumps(dataset)
    assert len(sent) < 100_000 < cache.blocks[0].numel()  # a 64 MB block was not copied into the pickle
    assert all(block.is_shared() for block in cache.blocks)


def test_a_dataset_that_cannot_be_sent_loads_in_this_process(shapes, monkeypatch):
    monkeypatch.setattr(loading, "start_method", lambda: "spawn")
    warnings: list[str] = []
    paths = [str(p) for p in sorted((shapes / "val").rglob("*.png"))]
    unpicklable = lambda image: Preprocess.for_arch(TINY, 227).eval_transforms()(image)  # noqa: E731
    loader = loading.make_loader(loading.ImageDataset(paths, [0] * len(paths), unpicklable),
                                 loading.LoaderSettings(batch_size=4, workers=2, warn=warnings.append))
    assert loader.num_workers == 0
    assert len(warnings) == 1 and "cannot start under the 'spawn' start method" in warnings[0]
    assert "lambda" in warnings[0] and "loading in this process instead" in warnings[0]
    assert sum(len(labels) for _, labels, _, _ in loader) == len(paths)


def test_a_closed_loader_leaves_no_process_and_an_open_one_does_not_hang_the_exit(shapes):
    """Loader processes ignore SIGTERM, which is how Python's exit stops them: closing must stop them, and an
    exit with a loader still open must not wait for them forever."""
    paths = [str(p) for p in sorted((shapes / "val").rglob("*.png"))]
    before = set(multiprocessing.active_children())
    loader = loading.make_loader(loading.ImageDataset(paths, None, Preprocess.for_arch(TINY, 227).eval_transforms()),
                                 loading.LoaderSettings(batch_size=2, workers=2))
    with loader:
        assert sum(len(indices) for _, _, indices, _ in loader) == len(paths)
        workers = set(multiprocessing.active_children()) - before
        assert len(workers) == 2
    assert not any(worker.is_alive() for worker in workers)

    left_open = textwrap.dedent(f"""
        from alexnet_cli.data import loading
        from alexnet_cli.data.preprocess import Preprocess
        dataset = loading.ImageDataset({paths!r}, None, Preprocess.for_arch({TINY}, 227).eval_transforms())
        loader = loading.make_loader(dataset, loading.LoaderSettings(batch_size=2, workers=2))
        next(iter(loader))
        print("exiting")
    """)
    result = subprocess.run([sys.executable, "-c", left_open], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "exiting" in result.stdout, result.stderr


def test_worker_init_leaves_the_stop_signals_to_the_main_process():
    """What each loader process runs first, here in this process: SIGINT and SIGTERM ignored, and unblocked again
    (the main process blocks them while it starts its loaders), so that only the main process acts on them."""
    stops = {signal.SIGINT, signal.SIGTERM}
    handlers = {sig: signal.getsignal(sig) for sig in stops}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        loading.worker_init(0)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in stops)
        assert not stops & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_loader_processes_start_where_there_are_no_signal_masks(shapes, monkeypatch):
    """Windows has no signal.pthread_sigmask: worker_init alone makes the loader processes ignore signals."""
    monkeypatch.delattr(signal, "pthread_sigmask")
    paths = [str(p) for p in sorted((shapes / "val").rglob("*.png"))]
    with loading.make_loader(loading.ImageDataset(paths, None, Preprocess.for_arch(TINY, 227).eval_transforms()),
                             loading.LoaderSettings(batch_size=3, workers=1)) as loader:
        assert sum(len(indices) for _, _, indices, _ in loader) == len(paths)


# ---------------------------------------------------------------------------------------------- signals


def _train_command(data: Path, output: str, *extra: str) -> list[str]:
    # On the CPU: a GPU's convolution kernels are not bit-reproducible, so bit-exact resume is a CPU promise.
    return [sys.executable, "-m", "alexnet_cli", "train", str(data), "--epochs", "2", *SMALL,
            "--batch-size", "2", "--device", "cpu", "--precision", "fp32", "--output", output, *extra]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """16 images at batch 2 (8 iterations an epoch), two loader processes, 2 epochs without a stop."""
    def build(root: Path) -> None:
        make_shapes(root / "data")
        result = subprocess.run(_train_command(root / "data" / "train", "straight", "--workers", "2"), cwd=root,
                                capture_output=True, text=True, timeout=300, env=env_without_debug())
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "signals", build)


@pytest.mark.parametrize("sig, code, group, workers", [
    (signal.SIGTERM, 143, True, "2"),  # Slurm preemption, systemd and `timeout` signal the whole group
    (signal.SIGINT, 130, True, "2"),  # a terminal's Ctrl-C reaches every process in the foreground group
    (signal.SIGTERM, 143, False, "0"),  # `kill PID`, with no loader process at all
], ids=["group-SIGTERM", "group-SIGINT", "main-SIGTERM"])
def test_a_signal_stops_training_gracefully_and_resume_is_exact(straight_run, sig, code, group, workers, runner,
                                                                monkeypatch):
    """Loader processes ignore the signal; the main process finishes its step, saves last.pt with the epoch in
    hand, exits 128 + N, and --resume ends with the weights of a run that was never stopped."""
    root, name = straight_run, f"stopped-{sig.name}-{'group' if group else 'main'}"
    # Steps of at least 0.2 s (support/sitecustomize.py), so that the signal lands in the step after the line.
    process = subprocess.Popen(_train_command(root / "data" / "train", name, "--workers", workers), cwd=root,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**env_without_debug(), "ALEXNET_TEST_STEP_SECONDS": "0.2"})
    for line in process.stderr:
        if "Epoch [1/2], Iter [3/8]" in line:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=300) == code, rest
    assert f"stopped by {sig.name} at epoch 1" in rest and f"alexnet train --resume {name}/last.pt" in rest, rest
    assert "killed by signal" not in rest and "Traceback" not in rest and "unexpected" not in rest, rest
    partial = torch.load(root / name / "last.pt", weights_only=True)
    assert partial["epoch"] == 0 and partial["partial"]["iteration"] >= 3

    # --precision and --workers are runtime options, not restored from the checkpoint. The resume needs no
    # process of its own: it goes on in this one, in the stopped run's folder.
    monkeypatch.chdir(root)
    resumed = invoke(runner, ["train", "--resume", f"{name}/last.pt", "--precision", "fp32", "--workers", "2"])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(root / "straight" / "last.pt", weights_only=True)
    b = torch.load(root / name / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [[row[c] for c in COLUMNS] for row in a["run_state"]["history"]] == \
           [[row[c] for c in COLUMNS] for row in b["run_state"]["history"]]


# ------------------------------------------------------------------------------------------------- MPS


def test_training_and_evaluation_make_no_float64_tensor_where_the_device_has_none(runner, shapes, monkeypatch):
    """MPS has no float64. Stand-in: a dispatch mode that fails on any float64 tensor, with the device
    reported as lacking it."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class NoFloat64(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for value in tree_leaves((args, kwargs, out)):
                if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                    raise AssertionError(f"a float64 tensor in {func}")
            return out

    from alexnet_cli.runtime import device as devmod

    monkeypatch.setattr(devmod, "device_has_float64", lambda device: False)
    with NoFloat64():
        trained = invoke(runner, _train_args(shapes, "run", "--workers", "0", "--epochs", "1"))
        assert trained.exit_code == 0, trained.output
        evaluated = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--device", "cpu",
                                    "--workers", "0", "--json"])
        assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 6


# --------------------------------------------------------------------------------------------- Windows


def test_atomic_write_without_os_fchmod_or_a_folder_to_fsync(tmp_path, monkeypatch):
    """Windows has no os.fchmod before Python 3.13, and refuses to open a folder."""
    monkeypatch.delattr(os, "fchmod")
    real_open = os.open

    def no_folders(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_folders)
    target = tmp_path / "weights.pt"
    for value in (1.0, 2.0):  # a new file, then one replaced
        save_checkpoint(target, {"format_version": 1, "weights": torch.full((3,), value)})
        assert torch.load(target, weights_only=True)["weights"].tolist() == [value] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]  # no temp file left behind


def _checkpoint_with_classes(path: Path, class_names: tuple[str, ...]) -> None:
    from alexnet_cli.models.alexnet import build_model

    torch.manual_seed(0)
    model = build_model(TEST_ARCH, num_classes=len(class_names))
    Checkpoint(arch=TEST_ARCH, class_names=class_names, preprocess=Preprocess.for_arch(
        TINY, 227), dropout=0.5, state_dict=model.state_dict()).save(path)


def test_machine_output_is_utf8_on_a_cp1252_stdout(tmp_path):
    """`alexnet predict --csv > out.csv` on Windows: stdout is cp1252, which has no 猫."""
    from PIL import Image

    _checkpoint_with_classes(tmp_path / "model.pt", ("猫", "dog"))
    (tmp_path / "写真").mkdir()
    Image.new("RGB", (80, 80), (200, 30, 30)).save(tmp_path / "写真" / "猫.png")
    env = {**env_without_debug(), "PYTHONIOENCODING": "cp1252"}
    for flag in ("--csv", "--json"):
        result = subprocess.run([sys.executable, "-m", "alexnet_cli", "predict", "写真", "--weights", "model.pt",
                                 "--device", "cpu", "--workers", "0", flag], cwd=tmp_path, capture_output=True,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
        text = result.stdout.decode("utf-8")  # fails on anything but UTF-8
        assert "写真/猫.png" in text and "猫" in text.replace("写真/猫.png", "")  # the path, and the label
    assert "\\u732b" not in text  # --json keeps it readable


def test_a_best_pt_held_open_is_retried_then_only_warned_about(runner, shapes, monkeypatch):
    """Windows refuses to replace a file another program has open (alexnet predict reading best.pt)."""
    from alexnet_cli.runtime import files as ckmod

    monkeypatch.setattr(ckmod, "PUBLISH_WAIT", 0)
    real_replace, refused = os.replace, []

    def locked(source, target):
        if Path(target).name == "best.pt":
            refused.append(target)
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", locked)
    result = invoke(runner, _train_args(shapes, "run", "--workers", "0", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    assert "could not replace run/best.pt" in result.stderr and "best.pt was not updated" in result.stderr
    assert len(refused) >= ckmod.PUBLISH_ATTEMPTS  # tried again before giving up
    assert torch.load("run/last.pt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in Path("run").iterdir() if p.name.startswith(".")) == []  # no link left over

    # A file that is free again on a later try is published, silently.
    monkeypatch.setattr(os, "replace", lambda s, t: (locked if len(refused) < ckmod.PUBLISH_ATTEMPTS + 2
                                                     else real_replace)(s, t))
    ckmod.publish_copy("run/last.pt", "run/best.pt")
    assert Path("run/best.pt").read_bytes() == Path("run/last.pt").read_bytes()


# ------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_free_memory_honours_a_cgroup_limit(tmp_path, monkeypatch, version):
    """A Docker or Kubernetes limit of 1 GiB with 768 MiB used, 256 MiB of it reclaimable cache: 512 MiB free,
    however much the host has."""
    group = tmp_path / "cgroup"
    if version == "v2":
        folder, names, self_line = group / "kubepods" / "pod1", ("memory.max", "memory.current"), "0::/kubepods/pod1"
        stat = "anon 536870912\ninactive_file 268435456\n"
        (group / "kubepods").mkdir(parents=True)
        (group / "kubepods" / "memory.max").write_text("max\n")  # the parent sets no limit
    else:
        folder, names, self_line = group / "memory" / "docker" / "c1", ("memory.limit_in_bytes",
                                                                        "memory.usage_in_bytes"), "4:memory:/docker/c1"
        stat = "cache 300000000\ntotal_inactive_file 268435456\n"
    folder.mkdir(parents=True)
    (folder / names[0]).write_text(f"{2**30}\n")
    (folder / names[1]).write_text(f"{768 * 2**20}\n")
    (folder / "memory.stat").write_text(stat)
    (tmp_path / "self").write_text(f"5:cpu:/\n{self_line}\n")
    monkeypatch.setattr(cachemod, "CGROUP_ROOT", group)
    monkeypatch.setattr(cachemod, "SELF_CGROUP", tmp_path / "self")
    monkeypatch.setattr(cachemod, "_machine_available", lambda: 20 * 2**30)
    assert cachemod.available_memory() == 512 * 2**20
    assert ImageCache(Preprocess.for_arch(TINY, 227), "auto").limit == 256 * 2**20  # half of what is free

    (folder / names[0]).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")  # no limit after all
    assert cachemod.available_memory() == 20 * 2**30


def test_free_memory_on_windows(monkeypatch):
    def global_memory_status(pointer):  # fills MEMORYSTATUSEX as Windows does
        pointer._obj.ullAvailPhys = 3 * 2**30
        return 1

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "windll", SimpleNamespace(kernel32=SimpleNamespace(
        GlobalMemoryStatusEx=global_memory_status)), raising=False)
    assert cachemod.available_memory() == 3 * 2**30


def test_where_free_memory_cannot_be_told_ram_does_not_refuse(tmp_path, monkeypatch):
    """No /proc/meminfo (macOS) falls back to os.sysconf; without that either, nothing is known."""
    monkeypatch.setattr(cachemod, "MEMINFO", tmp_path / "no-meminfo")
    monkeypatch.setattr(cachemod, "_cgroup_available", lambda: None)
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert cachemod.available_memory() == pages // 2  # a guess: half the physical memory
    monkeypatch.delattr(os, "sysconf")
    assert cachemod.available_memory() is None
    preprocess = Preprocess.for_arch(TINY, 227)
    insisting = ImageCache(preprocess, "ram")
    insisting.add("big.png", torch.zeros(3, 2000, 2000, dtype=torch.uint8))
    assert insisting.accepting and insisting.get("big.png") is not None
    assert ImageCache(preprocess, "auto").limit == 2**30  # auto stays modest
