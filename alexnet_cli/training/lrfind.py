"""The learning-rate range test (`alexnet lr-find DATA`, `alexnet train --lr find`), as fastai's lr_find:
train a copy of the model for a few hundred steps while the rate grows exponentially from `start` to `end`,
record the loss smoothed by an exponential moving average, and stop once it has run away.

It suggests the rate at the smoothed loss's minimum divided by 10: the loss still falls fastest about a
decade below where it bottoms out, and the rule needs no tuning. The model, its optimizer, the loaders'
data and the random streams are exactly as they were before the test: it trains a copy, with an optimizer
of its own, inside `torch.random.fork_rng`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from alexnet_cli.data import loading
from alexnet_cli.errors import ConfigError
from alexnet_cli.runtime.context import to_device
from alexnet_cli.training.loop import train_step
from alexnet_cli.training.setup import training_dataset
from alexnet_cli.training.state import make_optimizer

RULE = "the smoothed loss's minimum / 10"
SMOOTHING = 0.98  # fastai's beta
DIVERGED = 4.0  # stop once the smoothed loss is 4 times its minimum


@dataclass(frozen=True)
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed, one per step
    suggestion: float = 0.0
    rule: str = RULE
    start: float = 1e-7
    end: float = 1.0


def suggest(lrs: list[float], losses: list[float], start: float, end: float) -> float:
    """The rate at the smoothed loss's minimum, over 10, kept inside [start, end]."""
    finite = [(loss, lr) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if not finite:
        raise ConfigError("the LR range test never had a finite loss: check the data, or lower --start")
    best_lr = min(finite)[1]
    return min(end, max(start, best_lr / 10))


def find_lr(parts, data, runtime, cfg, observer, steps: int = 100, start: float = 1e-7,
            end: float = 1.0) -> LRFindResult:
    """Run the range test on a copy of `parts.model`, over training batches as the run would see them."""

    if not 0 < start < end:
        raise ConfigError(f"the LR range test needs 0 < start < end, got {start:g} and {end:g}")
    if steps < 2:
        raise ConfigError(f"the LR range test needs at least 2 steps, got {steps}")
    samples = data.train
    with torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        order = [int(i) % len(samples) for i in torch.randperm(max(len(samples), steps * cfg.batch_size))]
        loader = loading.make_loader(training_dataset(data, augment_seed=cfg.seed),
                                     loading.LoaderSettings.for_runtime(runtime, cfg.batch_size, observer.warn),
                                     order[:steps * cfg.batch_size])
        model = copy.deepcopy(parts.model).train()
        optimizer = make_optimizer(cfg.optimizer, model, lr=start, weight_decay=cfg.effective_weight_decay,
                                   device=runtime.device)
        gamma = (end / start) ** (1 / (steps - 1))
        lrs, losses, average, best = [], [], 0.0, math.inf
        observer.info(f"LR range test: {steps} steps from {start:.0e} to {end:.0e}")
        try:
            for step, (batch, labels, _, _) in enumerate(loader):
                if batch is None:
                    continue
                lr = start * gamma ** step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, _ = train_step(model, to_device(batch, runtime.device), labels.to(runtime.device), optimizer,
                                     parts.scaler, parts.criterion, runtime.precision)
                value = float(loss)
                average = SMOOTHING * average + (1 - SMOOTHING) * value
                smoothed = average / (1 - SMOOTHING ** (step + 1))  # bias-corrected
                lrs.append(lr)
                losses.append(smoothed if math.isfinite(value) else math.inf)
                best = min(best, smoothed)
                if not math.isfinite(value) or smoothed > DIVERGED * best:
                    break
        finally:
            loader.close()
    del model, optimizer
    return LRFindResult(lrs, losses, suggest(lrs, losses, start, end), RULE, start, end)


def set_lr(parts, lr: float) -> None:
    """Make `lr` the run's base rate: the optimizer's, and the schedule's, at the step it stands on."""
    factor = parts.scheduler.lr_lambdas[0](parts.scheduler.last_epoch) if parts.scheduler is not None else 1.0
    for group in parts.optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    if parts.scheduler is not None:
        parts.scheduler.base_lrs = [lr] * len(parts.optimizer.param_groups)
        parts.scheduler._last_lr = [group["lr"] for group in parts.optimizer.param_groups]
