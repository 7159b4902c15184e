"""Dynamic batching: concurrent requests share one forward pass.

A small queue with two knobs, as LitServe (max_batch_size, batch_timeout), Ray Serve (@serve.batch) and
KServe's batcher (maxBatchSize, maxLatency) have it: a batch closes at `max_batch` images, or `max_wait` after
its first image arrived. One more rule keeps a lone caller from paying the wait: a batch waits only while more
images are already admitted and on their way (their bytes being read, or decoded). With nothing else coming it
goes at once, so one client sees the latency of a handler that does not batch at all.

The forward pass runs on a thread of its own, so the event loop goes on reading and decoding the next requests
meanwhile, and those gather into the next batch. Admission is bounded: past `max_queue` images admitted and not
yet answered, `admit` refuses at once (Overloaded), before the request's image is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full: answered 503, with Retry-After in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy: {retry_after} s until it has room")
        self.retry_after = retry_after


@dataclass
class _Entry:
    item: Any  # what the forward pass takes: a decoded upload (serving/model.py's Sample)
    future: asyncio.Future[Any]
    arrived: float


@dataclass
class Ticket:
    """The images one request holds in the queue, from admission to its answer. `close` gives back what it
    holds, whatever happened (answered, refused for a bad upload, or the client gone)."""

    batcher: Batcher
    images: int = 0  # admitted and not yet answered
    coming: int = 0  # admitted and not yet submitted
    closed: bool = field(default=False, repr=False)

    def grow(self, images: int) -> None:
        """More images for this request (an inference request with several inputs): admitted, or Overloaded."""
        self.batcher._admit(self, images)

    async def submit(self, item: Any) -> Any:
        if self.closed or self.coming <= 0:
            raise RuntimeError("submit beyond what the ticket was admitted for")
        return await self.batcher._submit(self, item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.batcher._release(self)


class Batcher:
    """run_batch(items) -> one output per item, called on the forward thread with up to max_batch items."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[int, float], None] | None = None,
                 on_wait: Callable[[float], None] | None = None, costly: Callable[[Any], bool] | None = None,
                 costly_share: float = 1.0) -> None:
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_wait = on_wait or (lambda seconds: None)  # each item's wait, from submission to its pass
        # Costly items (Grad-CAM's forward and backward pass) and plain ones never share a batch: one kind's
        # failure or its slower pass never reaches the other's callers. Costly ones go one a batch, and while
        # other images are in flight take at most `costly_share` of the forward thread: after one of t s, the
        # next waits t * (1 / costly_share - 1), plain batches going meanwhile, and then goes next.
        self.costly = costly or (lambda item: False)
        self.costly_rest = 1 / costly_share - 1
        self._costly_free_at = 0.0
        self.busy_since: float | None = None  # when the forward pass in progress began (health.py's watch)
        self.admitted = 0  # images admitted and not yet answered: the queue's depth
        self.coming = 0  # of those, not yet submitted (being read or decoded)
        self._pending: deque[_Entry] = deque()
        self._wake = asyncio.Event()  # made again in start(), on the loop that serves
        self._task: asyncio.Task | None = None
        self._forward = ThreadPoolExecutor(1, thread_name_prefix="alexnet-forward")
        self._seconds_per_batch = 0.0  # the last batch's, for Retry-After

    # -- the request's side ---------------------------------------------------------------------------------

    def admit(self, images: int = 1) -> Ticket:
        ticket = Ticket(self)
        self._admit(ticket, images)
        return ticket

    def _admit(self, ticket: Ticket, images: int) -> None:
        if self.admitted + images > self.max_queue:
            raise Overloaded(self.retry_after(images))
        self.admitted += images
        self.coming += images
        ticket.images += images
        ticket.coming += images

    def retry_after(self, images: int = 1) -> int:
        """Whole seconds until the queue has drained enough for `images` more, at the last batch's pace."""
        batches = math.ceil((self.admitted + images - self.max_queue) / self.max_batch) + 1
        return max(1, math.ceil(batches * self._seconds_per_batch))

    async def _submit(self, ticket: Ticket, item: Any) -> Any:
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        ticket.coming -= 1
        self.coming -= 1
        self._pending.append(_Entry(item, future, time.monotonic()))
        self._wake.set()
        return await future

    def _release(self, ticket: Ticket) -> None:
        self.admitted -= ticket.images
        self.coming -= ticket.coming
        ticket.images = ticket.coming = 0
        if self._wake is not None:
            self._wake.set()  # a batch may have been waiting for images that will now never come

    # -- the forward pass's side ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="alexnet-batcher")

    async def stop(self) -> None:
        """After the server has drained: nothing is pending any more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._forward.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if (rest := self._rest()) > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), rest)  # a plain image, or the rest is over
                continue
            await self._gather()
            batch = [entry for entry in self._take() if not entry.future.done()]  # less callers that went away
            if not batch:
                continue
            started = self.busy_since = time.monotonic()
            for entry in batch:
                self.on_wait(started - entry.arrived)
            try:
                outputs = await loop.run_in_executor(self._forward, self.run_batch, [e.item for e in batch])
            except Exception as exc:  # every caller of the batch hears of it; the loop goes on
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            finally:
                self.busy_since = None
            self._seconds_per_batch = time.monotonic() - started
            if self.costly(batch[0].item):
                self._costly_free_at = time.monotonic() + self._seconds_per_batch * self.costly_rest
            self.on_batch(len(batch), self._seconds_per_batch)
            for entry, output in zip(batch, outputs):
                if not entry.future.done():
                    entry.future.set_result(output)

    def _rest(self) -> float:
        """Seconds to wait before the next batch: only costly items pending, other images in flight (being
        read or decoded), and the last costly batch's rest not over."""
        if any(not self.costly(entry.item) for entry in self._pending) or self.admitted <= len(self._pending):
            return 0.0
        return self._costly_free_at - time.monotonic()

    def _take(self) -> list[_Entry]:
        """Pending entries of one kind, in order; the others stay for the next. A costly one, alone, when its
        rest is over (so that plain traffic cannot starve it); else up to max_batch plain ones."""
        costly = [entry for entry in self._pending if self.costly(entry.item)]
        plain = [entry for entry in self._pending if not self.costly(entry.item)]
        kind = bool(costly) and (not plain or time.monotonic() >= self._costly_free_at)
        taken: list[_Entry] = []
        kept: deque[_Entry] = deque()
        limit = 1 if kind else self.max_batch  # a costly batch holds the forward thread: one image at a time
        while self._pending and len(taken) < limit:
            entry = self._pending.popleft()
            (taken if self.costly(entry.item) == kind else kept).append(entry)
        self._pending.extendleft(reversed(kept))
        return taken

    @property
    def running(self) -> bool:
        """Whether the batcher's task is alive (it ends only when stopped, or by a bug)."""
        return self._task is not None and not self._task.done()

    async def _gather(self) -> None:
        """Wait for more images while the batch has room, more are on their way, and the first one has waited
        less than max_wait."""
        deadline = self._pending[0].arrived + self.max_wait_s
        while len(self._pending) < self.max_batch and self.coming > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return
