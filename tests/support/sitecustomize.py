"""Runs at the start of every Python process a subprocess test starts (conftest.env_without_debug puts this
folder on PYTHONPATH): registers the suite's architecture (alexnet_test_arch.py); with
ALEXNET_TEST_STEP_SECONDS set, makes each training step take at least that long; and with
ALEXNET_TEST_CHECKS_LOG set, appends one line per file the index checks to that file ("pid path"), so a test
can see which process opened which file; with ALEXNET_TEST_FORWARD_SECONDS set, makes each forward pass of
`alexnet serve` take at least that long, so that a signal finds requests in flight.

The small architecture steps in milliseconds, so a test that signals a run when it reads a given log line would
otherwise land its signal several steps (or an epoch) later than the line it read; a slow step keeps the
signal where the test sends it, as the real model's step did. A test that needs a sitecustomize.py of its own
imports alexnet_test_arch first.
"""

import os

import alexnet_test_arch  # noqa: F401

if os.environ.get("ALEXNET_TEST_STEP_SECONDS"):
    import time

    import alexnet_cli.training.loop as loop

    _seconds, _step = float(os.environ["ALEXNET_TEST_STEP_SECONDS"]), loop.train_step

    def _slow_step(*args, **kwargs):
        started = time.monotonic()
        result = _step(*args, **kwargs)
        time.sleep(max(0.0, _seconds - (time.monotonic() - started)))
        return result

    loop.train_step = _slow_step

if os.environ.get("ALEXNET_TEST_CHECKS_LOG"):
    import alexnet_cli.data.index as index

    _log, _check = os.environ["ALEXNET_TEST_CHECKS_LOG"], index.check_file

    def _logged_check(path):
        with open(_log, "a") as handle:  # one short write per line: lines from several processes stay whole
            handle.write(f"{os.getpid()} {path}\n")
        return _check(path)

    index.check_file = _logged_check

if os.environ.get("ALEXNET_TEST_FORWARD_SECONDS"):
    import time

    import alexnet_cli.serving.model as served

    _forward_seconds, _run = float(os.environ["ALEXNET_TEST_FORWARD_SECONDS"]), served.ServedModel.run

    def _slow_run(self, samples):  # alexnet serve's forward pass, as long as the real model's at a full batch
        started = time.monotonic()
        result = _run(self, samples)
        time.sleep(max(0.0, _forward_seconds - (time.monotonic() - started)))
        return result

    served.ServedModel.run = _slow_run
