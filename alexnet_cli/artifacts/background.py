"""Checkpoints written in the background, so that training does not wait for the disk.

The loop hands over an epoch's checkpoint and goes on at once. A thread serialises it into a temp file,
fsyncs it and renames it over last.pt, then publishes best.pt and writes metrics.csv: the same steps as a
synchronous save, so a kill at any moment still leaves the previous file whole.

The snapshot is the live tensors, not a copy: a copy of the weights and Adam's two moments would add about
700 MB to a CPU run's peak memory. Those tensors change only in the optimizer's step, and `guard(optimizer)`
makes that step wait until the thread has serialised them (into the page cache; the fsync goes on alongside
training). The first forward and backward pass of the next epoch, or its validation, usually cover that.
The containers around the tensors (dicts, lists, the metrics history) are copied when a write is handed over.

At most one write is in flight: handing over the next one, a save on a signal, and the end of the run wait
for it. A failed write raises its error (OutputError for a full disk) at the first of those, or at the next
optimizer step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Job = Callable[[Callable[[], None], Callable[[str], None]], None]  # job(serialised, warn)


def copy_containers(value: Any) -> Any:
    """dicts, lists and tuples copied all the way down; tensors and other leaves shared."""
    if isinstance(value, dict):
        return {key: copy_containers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_containers(item) for item in value)
    return value


class CheckpointWriter:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._serialised = threading.Event()
        self._serialised.set()
        self._error: BaseException | None = None
        self._warnings: list[str] = []
        self.waits: list[float] = []  # per write handed over: seconds the loop waited on its account

    def submit(self, job: Job, warn: Callable[[str], None]) -> None:
        """Run `job(serialised, warn)` on the writer thread, after the previous one has finished. The job
        calls `serialised()` once no saved tensor is read any more; `warn` lines are said on this thread."""
        self.wait(warn)
        self.waits.append(0.0)
        self._serialised.clear()
        self._thread = threading.Thread(target=self._run, args=(job,), name="alexnet-checkpoint", daemon=True)
        self._thread.start()

    def _run(self, job: Job) -> None:
        try:
            job(self._serialised.set, self._warnings.append)
        except BaseException as exc:  # raised on the training thread, at its next wait
            self._error = exc
        finally:
            self._serialised.set()

    def wait_serialised(self) -> None:
        """Until the write in flight no longer reads the saved tensors (the optimizer's step pre-hook)."""
        if not self._serialised.is_set():
            began = time.perf_counter()
            self._serialised.wait()
            self.waits[-1] += time.perf_counter() - began
        self._raise()

    def wait(self, warn: Callable[[str], None]) -> None:
        """Until the write in flight is on disk; its warnings said, its error raised."""
        if self._thread is not None:
            began = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.waits[-1] += time.perf_counter() - began
        while self._warnings:
            warn(self._warnings.pop(0))
        self._raise()

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def guard(self, optimizer) -> None:
        """Make every step of `optimizer` wait until the write in flight has serialised its tensors."""
        optimizer.register_step_pre_hook(lambda *_: self.wait_serialised())
