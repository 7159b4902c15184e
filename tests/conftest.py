"""The suite's fixtures and hooks: tiny synthetic image folders in tmp_path, a trained checkpoint shared by
the tests that only read one, a CLI runner with a pinned width, and the budget and locks that keep the suite
fast under pytest-xdist. What the tests share beside fixtures is in support/helpers.py."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# The suite's small architecture (support/alexnet_test_arch.py) is registered before any test imports the CLI:
# support/ goes on sys.path here, and the helpers that the tests share come from support/helpers.py.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
from support.helpers import FAST_TRAIN, built_once, invoke, make_shapes

# No test should take longer than this on the 2-core machine (docs/development.md, "How the suite stays fast").
BUDGET_SECONDS = 15


def pytest_terminal_summary(terminalreporter):
    """After --durations' list of the slowest: any test phase over the budget, named, so that it is seen."""
    over = sorted(((report.duration, report.when, report.nodeid) for reports in terminalreporter.stats.values()
                   for report in reports
                   if isinstance(report, pytest.TestReport) and report.duration > BUDGET_SECONDS), reverse=True)
    if over:
        terminalreporter.write_sep("=", f"over the {BUDGET_SECONDS} s budget of one test (docs/development.md)")
        for seconds, when, nodeid in over:
            terminalreporter.write_line(f"{seconds:.1f}s {when} {nodeid}")


def _threads(count: int) -> None:
    """torch's threads in this process, and in the processes its tests start (OMP_NUM_THREADS)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(count)
    torch.set_num_threads(count)


def pytest_configure(config):
    """Under pytest-xdist, the workers share the cores: each gets its share of torch's threads rather than
    every worker using every core (but for the tests marked whole_machine: see pytest_runtest_protocol)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        _threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, a test marked whole_machine (several Python processes at once, or the 58M-parameter
    model) runs alone, on every core: the workers share a readers-writer lock, which such a test takes
    exclusively and every other test shared. The wait happens here, outside the test's setup, call and teardown,
    so --durations reports each test's own time, not its turn in the queue."""
    if "PYTEST_XDIST_TESTRUNUID" not in os.environ:
        yield
        return
    import fcntl  # POSIX; the suite runs its subprocess tests on Linux and macOS
    import tempfile

    import torch

    alone = item.get_closest_marker("whole_machine") is not None
    prefix = Path(tempfile.gettempdir()) / f"alexnet-tests-{os.environ['PYTEST_XDIST_TESTRUNUID']}"
    # A turnstile in front of the lock, so that a waiting whole_machine test is not starved by the others.
    with open(f"{prefix}.turnstile", "a") as turnstile, open(f"{prefix}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        threads = torch.get_num_threads()
        if alone:
            _threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            _threads(threads)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own folder (runs/ lands there) with a fixed 100-column console."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    # What the tool remembers between runs (the CPU's bf16 measurement) goes to the test's folder, not ~/.cache
    monkeypatch.setenv("ALEXNET_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.delenv("ALEXNET_DEBUG", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()






@pytest.fixture
def shapes(tmp_path) -> Path:
    """data/train and data/val in the test's own folder (make_shapes), free to change."""
    return make_shapes(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """best.pt of one epoch of the small architecture on `shapes`' images, trained once per session (once per
    pytest-xdist worker), for the tests that only read a checkpoint: copy it (`trained_run`) to change it."""
    def build(root: Path) -> None:
        make_shapes(root / "data")
        with pytest.MonkeyPatch.context() as patch:  # what _isolated gives a test, for this one run
            patch.chdir(root)
            patch.setenv("COLUMNS", "100")
            patch.setenv("ALEXNET_CACHE_DIR", str(root / "user-cache"))
            result = invoke(CliRunner(), ["train", str(root / "data" / "train"), "--epochs", "1", "--output", "run",
                                          *FAST_TRAIN])
        assert result.exit_code == 0, result.output

    return built_once(tmp_path_factory, "trained", build) / "run" / "best.pt"


@pytest.fixture
def trained_run(tmp_path, trained_checkpoint) -> Path:
    """run/best.pt in the test's folder: a copy of trained_checkpoint, for `--weights run/best.pt`."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(trained_checkpoint, run / "best.pt")
    return run
