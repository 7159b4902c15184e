"""The epoch loop: one step, one epoch (or the rest of one), and stopping between two steps on a signal.

bench/train_step.py times train_step on its own; the rest is what the CLI's log line and --resume rely on.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alexnet_cli import distributed as distmod
from alexnet_cli.device import Precision, sum_dtype
from alexnet_cli.errors import AlexNetError, DataError, NonFiniteLossError
from alexnet_cli.observer import Observer
from alexnet_cli.runtime import to_device


def train_step(model, images, labels, optimizer, scaler, criterion, precision: Precision):
    """One optimisation step as `alexnet train` runs it; returns the (detached) loss and logits.

    `images` are on the model's device, channels_last (see to_device). bench/train_step.py times this function.
    """
    with precision.autocast(images.device):
        logits = model(images)
        loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def start_epoch_progress(epoch: int, partial: dict[str, Any] | None, dist: distmod.Dist, observer) -> EpochProgress:
    """Where an epoch starts: at its beginning, or where an interrupted run stopped inside it.

    The saved totals cover every rank; rank 0 carries them on and the others start from zero, so that the
    sum over ranks at the epoch's end is right. With a different number of processes the rest of the epoch
    would be sharded differently, so it starts again from its beginning.
    """
    if not partial or partial["epoch"] != epoch:
        return EpochProgress(epoch)
    fields = {k: v for k, v in partial.items() if k in EpochProgress.__dataclass_fields__}
    saved_world = partial.get("world_size", 1)
    if saved_world != dist.world_size:
        observer.warn(f"the run stopped inside epoch {epoch} with {saved_world} processes; with "
                      f"{dist.world_size} now, epoch {epoch} starts again from its beginning")
        return EpochProgress(epoch)
    if dist.rank > 0:
        return EpochProgress(epoch, iteration=fields["iteration"], seconds=fields["seconds"])
    return EpochProgress(**fields)


@dataclass
class EpochProgress:
    """The running totals of the epoch in progress; saved when a run is interrupted mid-epoch."""

    epoch: int
    iteration: int = 0  # steps done in this epoch
    loss_sum: float = 0.0  # sum over images of the per-image loss
    correct: int = 0
    images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def sum_over_ranks(self, device, dist: distmod.Dist) -> None:
        """The epoch's totals over every rank (one process: as they are)."""
        import torch

        totals = distmod.all_reduce_sum(torch.tensor(
            [self.loss_sum, self.correct, self.images], dtype=sum_dtype(device), device=device), dist)
        self.loss_sum, self.correct, self.images = totals[0].item(), int(totals[1]), int(totals[2])


class TrainingInterrupted(AlexNetError):
    """Ctrl-C or SIGTERM: last.pt was written; exit 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def graceful_interrupts():
    """While training, SIGINT and SIGTERM only ask the loop to stop after the current step.

    Yields the list of signals received. A second Ctrl-C stops at once. The previous handlers are restored
    on the way out, whatever happens.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals can only be set from there
        yield received
        return

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train_one_epoch(model, loader, optimizer, scaler, criterion, device, precision, progress: EpochProgress,
                     iterations: int, epochs: int, log_interval: int, observer: Observer, on_failed,
                     should_stop: Callable[[], bool], distributed: bool = False, mix=None) -> bool:
    """One epoch (or the rest of one); returns True when a signal stopped it between two steps.

    `mix` (augment.batch_mix) mixes each batch and its labels into per-class probabilities; the accuracy then
    counts a prediction right when it is the class with the larger share of the mixed image."""
    import torch

    model.train()
    epoch = progress.epoch
    observer.epoch_start(epoch, epochs, iterations, len(loader.dataset))
    # Running sums stay on the device; .item() (a host sync) happens only at log intervals and at the end.
    loss_sum = torch.tensor(progress.loss_sum, dtype=sum_dtype(device), device=device)
    correct = torch.tensor(progress.correct, dtype=torch.long, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    images = progress.images
    started = time.perf_counter()
    elapsed_before = progress.seconds
    new_images = 0

    def sync() -> None:
        if nonfinite.item():
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {epoch}, iteration {progress.iteration}: try a lower "
                "--lr; the last good checkpoint is kept"
            )
        progress.loss_sum, progress.correct, progress.images = loss_sum.item(), int(correct.item()), images
        progress.seconds = elapsed_before + time.perf_counter() - started

    for batch, labels, _, failed in loader:
        on_failed(failed)
        progress.iteration += 1
        if batch is not None:
            batch = to_device(batch, device)
            labels = labels.to(device, non_blocking=True)
            targets = labels
            if mix is not None:
                batch, targets = mix(batch, labels)
                labels = targets.argmax(1)
            loss, logits = train_step(model, batch, targets, optimizer, scaler, criterion, precision)
            nonfinite |= ~torch.isfinite(loss)
            loss_sum += loss.to(loss_sum.dtype) * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            images += labels.numel()
            new_images += labels.numel()
        elif distributed:
            # Every rank must take every step (DDP all-reduces the gradients); one with nothing to train on
            # cannot, so it stops the run rather than leave the others waiting.
            raise DataError(f"no image of batch {progress.iteration} of epoch {epoch} could be read on this "
                            "rank; remove the unreadable files named above")
        stop = should_stop()
        if progress.iteration % log_interval == 0 or progress.iteration == iterations or stop:
            sync()
            if batch is not None:
                rate = new_images / max(1e-9, time.perf_counter() - started)
                observer.step(epoch, epochs, progress.iteration, iterations, loss.item(), rate)
        if stop:
            return True  # synced just above
    sync()
    return False
