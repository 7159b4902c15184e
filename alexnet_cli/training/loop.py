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

import torch

from alexnet_cli.data.loading import Loader, ThreadLoader
from alexnet_cli.errors import AlexNetError, DataError, NonFiniteLossError
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.context import Runtime, to_device
from alexnet_cli.runtime.device import sum_dtype
from alexnet_cli.runtime.precision import Precision
from alexnet_cli.training.state import EpochProgress, TrainingParts


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


@dataclass(frozen=True)
class EpochReport:
    """How an epoch reports as it goes: a step line to the observer every `log_interval` iterations (and at the
    last), and each batch's unreadable files to `on_failed`."""

    observer: Observer
    epochs: int
    iterations: int
    log_interval: int
    on_failed: Callable[[Any], int]


def train_one_epoch(parts: TrainingParts, loader: Loader | ThreadLoader, runtime: Runtime, progress: EpochProgress,
                    report: EpochReport, should_stop: Callable[[], bool], distributed: bool = False) -> bool:
    """One epoch (or the rest of one); returns True when a signal stopped it between two steps.

    With mixup or cutmix (`parts.mix`), each batch and its labels are mixed into per-class probabilities; the
    accuracy then counts a prediction right when it is the class with the larger share of the mixed image."""
    model, device, observer, epochs, iterations = parts.net, runtime.device, report.observer, report.epochs, \
        report.iterations
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
        report.on_failed(failed)
        progress.iteration += 1
        if batch is not None:
            batch = to_device(batch, device)
            labels = labels.to(device, non_blocking=True)
            targets = labels
            if parts.mix is not None:
                batch, targets = parts.mix(batch, labels)
                labels = targets.argmax(1)
            loss, logits = train_step(model, batch, targets, parts.optimizer, parts.scaler, parts.criterion,
                                      runtime.precision)
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
        if progress.iteration % report.log_interval == 0 or progress.iteration == iterations or stop:
            sync()
            if batch is not None:
                rate = new_images / max(1e-9, time.perf_counter() - started)
                observer.step(epoch, epochs, progress.iteration, iterations, loss.item(), rate)
        if stop:
            return True  # synced just above
    sync()
    return False
