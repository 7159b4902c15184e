"""What every endpoint does with images, whatever protocol brought them: admit them into the queue (or refuse
at once), decode them on threads, let the batcher run them, and make the answers."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.data.images import UnreadableImage
from alexnet_cli.runtime.context import DECODE_THREADS
from alexnet_cli.serving.batching import Batcher, Ticket
from alexnet_cli.serving.metrics import Metrics
from alexnet_cli.serving.model import Output, ServedModel
from alexnet_cli.serving.uploads import RequestError


class Service:
    def __init__(self, model: ServedModel, cfg: ServeConfig) -> None:
        self.model, self.cfg = model, cfg
        self.metrics = Metrics(lambda: self.batcher.admitted, cfg.max_queue)
        self.batcher = Batcher(model.run, cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_queue,
                               on_batch=self.metrics.observe_batch, kind=lambda sample: sample.picture is not None,
                               on_wait=self.metrics.queue_wait.observe)
        # Pillow decodes without holding the GIL: these threads decode while the forward thread computes.
        self.decoding = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="alexnet-decode")
        self.draining = False  # set on SIGTERM: ready turns false while the requests in flight are answered

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """After the drain: decodes still queued are cancelled, not waited for."""
        self.decoding.shutdown(wait=False, cancel_futures=True)
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
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decoding, self.model.decode, data, explain)
        except UnreadableImage as exc:  # "the upload: not an image (...)": refused, as the client's error
            raise RequestError(400, f"{which}{exc}") from None
        finally:
            self.metrics.decode_seconds.observe(time.perf_counter() - started)

    async def predict(self, ticket: Ticket, data: bytes, top_k: int, explain: bool) -> dict[str, Any]:
        """POST /predict's answer: predict --json's record for the image, with the Grad-CAM overlay if asked."""
        sample = await self._decode(data, explain)
        output = await ticket.submit(sample)
        record = self.model.record(output, top_k)
        if explain:
            caption = f"{record['label']} {record['confidence']:.1%}"
            record["explanation"] = await asyncio.get_running_loop().run_in_executor(
                self.decoding, self.model.explanation, sample, output, caption)
        return record

    async def classify(self, ticket: Ticket, images: list[bytes]) -> list[Output]:
        """Several images of one request, each through the batcher like any other."""
        many = len(images) > 1
        samples = await asyncio.gather(*(self._decode(data, False, f"image {i} of {len(images)}: " if many else "")
                                         for i, data in enumerate(images)), return_exceptions=True)
        for sample in samples:  # every decode has ended: a refusal leaves nothing of this request running
            if isinstance(sample, BaseException):
                raise sample
        return list(await asyncio.gather(*(ticket.submit(sample) for sample in samples)))
