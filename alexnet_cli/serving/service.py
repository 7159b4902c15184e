"""What every endpoint does with images, whatever protocol brought them: admit them into the queue (or refuse
at once), decode them on threads, let the batcher run them, and make the answers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.data.images import LargeUpload, UnreadableImage
from alexnet_cli.runtime.context import DECODE_THREADS
from alexnet_cli.serving.batching import Batcher, Ticket
from alexnet_cli.serving.metrics import Metrics
from alexnet_cli.serving.model import Output, ServedModel
from alexnet_cli.serving.uploads import UPLOADS_HELD, BodyBudget, RequestError

# Costly work runs on a lane of its own: one thread under SCHED_IDLE, one piece at a time, and while other
# images are in flight it takes at most COSTLY_SHARE of a core (after a piece of t s, the next waits 9t). Two
# kinds go there (docs/serve.md, "Costly requests"):
# - an upload that decodes to over LARGE_PIXELS (a JPEG's after its draft): a PNG of 40 megapixels is a few
#   hundred kB that take 0.7 s of a core to decode, one of 4 takes 0.07 s, as long as a batch of photos; at most
#   LARGE_WAITING more wait for the lane (past it, 429);
# - Grad-CAM (?explain=1): a forward and a backward pass at batch 1 and the overlay drawn, 50 ms at 67 px where
#   a plain image costs 4; at most EXPLAINING such requests are in the server at once (past it, 429).
# So a client sending either in a loop gets the CPU the good requests leave, and never a decoding thread, a
# forward pass or a place in the queue that they need.
LARGE_PIXELS = 4_000_000
LARGE_WAITING = 2
EXPLAINING = 3
COSTLY_SHARE = 0.1


def lowest_priority() -> None:
    """The calling thread under SCHED_IDLE where Linux has it (it runs only on a core nothing else wants, and a
    waking thread of any other takes the core from it at once), else at nice 19 where the niceness is the
    thread's own. Lowering either needs no privilege; elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Service:
    def __init__(self, model: ServedModel, cfg: ServeConfig) -> None:
        self.model, self.cfg = model, cfg
        self.metrics = Metrics(lambda: self.batcher.admitted, cfg.max_queue)
        self.batcher = Batcher(model.run, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue,
                               on_batch=self.metrics.observe_batch, on_wait=self.metrics.queue_wait.observe,
                               costly=lambda sample: sample.picture is not None, costly_share=COSTLY_SHARE)
        # Pillow decodes without holding the GIL: these threads decode while the forward thread computes.
        self.decoding = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="alexnet-decode")
        self.costly = ThreadPoolExecutor(1, thread_name_prefix="alexnet-costly", initializer=lowest_priority)
        self.costly_turn = asyncio.Lock()  # one piece of costly work at a time, in the order they came
        self.costly_free_at = 0.0  # the loop's time when the lane has rested enough for the next piece
        self.on_lane = 0  # images on the costly lane: working, or waiting for it
        self.large_waiting = 0  # large images on the lane: decoding, or waiting for it
        self.lane_seconds = 1.0  # the CPU time of the lane's last piece of work: its rest, and Retry-After
        self.explaining = 0  # requests with ?explain=1 in the server
        self.bodies = BodyBudget(UPLOADS_HELD * cfg.max_upload_bytes)  # the uploads' bytes held at once
        self.draining = False  # set on SIGTERM: ready turns false while the requests in flight are answered

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """After the drain: decodes still queued are cancelled, not waited for."""
        self.decoding.shutdown(wait=False, cancel_futures=True)
        self.costly.shutdown(wait=False, cancel_futures=True)
        await self.batcher.stop()

    # -- health ---------------------------------------------------------------------------------------------

    def live(self) -> bool:
        """False when the server cannot recover: its batcher has died."""
        return self.batcher.running

    def ready(self) -> tuple[bool, str]:
        """Whether to send it traffic, and why not: draining, a dead batcher, or a forward pass that has run
        past --timeout."""
        if self.draining:
            return False, "draining after SIGTERM"
        if not self.batcher.running:
            return False, "the batcher has stopped"
        busy = self.batcher.busy_since
        if busy is not None and time.monotonic() - busy > self.cfg.timeout:
            return False, f"a forward pass has run for over {self.cfg.timeout:g} s (--timeout)"
        return True, ""

    async def within_timeout(self, work):
        """`work` (a coroutine), or 504 when it takes longer than --timeout. asyncio.timeout where Python has it
        (3.11): it runs the work in the request's own task, where wait_for would make a task a request."""
        try:
            if hasattr(asyncio, "timeout"):
                async with asyncio.timeout(self.cfg.timeout):
                    return await work
            return await asyncio.wait_for(work, self.cfg.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestError(504, f"the request took longer than {self.cfg.timeout:g} s (--timeout)") from None

    def admit(self, images: int = 1) -> Ticket:
        """A place in the queue, or Overloaded (503) at once."""
        return self.batcher.admit(images)

    async def _decode(self, data: bytes, explain: bool, which: str = ""):
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            try:
                return await loop.run_in_executor(self.decoding, self.model.decode, data, explain, LARGE_PIXELS)
            except LargeUpload as large:
                return await self._decode_large(data, explain, which, large.pixels)
        except UnreadableImage as exc:  # "the upload: not an image (...)": refused, as the client's error
            raise RequestError(400, f"{which}{exc}") from None
        finally:
            self.metrics.decode_seconds.observe(time.perf_counter() - started)

    async def _decode_large(self, data: bytes, explain: bool, which: str, pixels: int):
        """An image of over LARGE_PIXELS, decoded on the costly lane; 429 when LARGE_WAITING more already wait."""
        if self.large_waiting > LARGE_WAITING:
            retry = max(1, math.ceil(self.large_waiting * self.lane_seconds / COSTLY_SHARE))
            raise RequestError(429, f"{which}the upload: {pixels:,} pixels to decode; this server decodes one "
                                    f"image of over {LARGE_PIXELS:,} pixels at a time, and {self.large_waiting} "
                                    f"are already decoding or waiting: retry in {retry} s",
                               {"Retry-After": str(retry)})

        self.large_waiting += 1
        try:
            return await self._on_lane(lambda: self.model.decode(data, explain))
        finally:
            self.large_waiting -= 1

    async def _on_lane(self, work):
        """work() on the costly lane, in its turn, after the lane's rest."""
        loop = asyncio.get_running_loop()

        def timed():
            started = time.thread_time()  # the lane's own CPU time: under SCHED_IDLE it may wait long for a core
            try:
                return work()
            finally:
                self.lane_seconds = time.thread_time() - started

        self.on_lane += 1
        try:
            async with self.costly_turn:
                if (rest := self.costly_free_at - loop.time()) > 0:
                    await asyncio.sleep(rest)
                try:
                    return await loop.run_in_executor(self.costly, timed)
                finally:
                    # Other images in flight: the lane rests, so that it takes at most COSTLY_SHARE of a core.
                    others = self.batcher.admitted > self.on_lane
                    self.costly_free_at = loop.time() + (self.lane_seconds * (1 / COSTLY_SHARE - 1) if others
                                                         else 0.0)
        finally:
            self.on_lane -= 1

    async def predict(self, ticket: Ticket, data: bytes, top_k: int, explain: bool) -> dict[str, Any]:
        """POST /predict's answer: predict --json's record for the image, with the Grad-CAM overlay if asked
        (computed on the costly lane, not in a batch)."""
        if not explain:
            output = await ticket.submit(await self._decode(data, False))
            return self.model.record(output, top_k)
        if self.explaining >= EXPLAINING:
            raise RequestError(429, f"this server draws Grad-CAM for {EXPLAINING} requests at a time, and "
                                    f"{self.explaining} are in progress: retry in a second, or ask without "
                                    "explain=1", {"Retry-After": "1"})
        self.explaining += 1
        try:
            sample = await self._decode(data, True)
            output = await ticket.submit(sample)  # a batch of Grad-CAM requests, after plain ones (batching.py)
            record = self.model.record(output, top_k)
            caption = f"{record['label']} {record['confidence']:.1%}"
            return {**record, "explanation": await self._on_lane(
                lambda: self.model.explanation(sample, output, caption))}
        finally:
            self.explaining -= 1

    async def classify(self, ticket: Ticket, images: list[bytes]) -> list[Output]:
        """Several images of one request, each through the batcher like any other."""
        many = len(images) > 1
        samples = await asyncio.gather(*(self._decode(data, False, f"image {i} of {len(images)}: " if many else "")
                                         for i, data in enumerate(images)), return_exceptions=True)
        for sample in samples:  # every decode has ended: a refusal leaves nothing of this request running
            if isinstance(sample, BaseException):
                raise sample
        return list(await asyncio.gather(*(ticket.submit(sample) for sample in samples)))
