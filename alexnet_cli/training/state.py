"""What a run carries from step to step and saves in every checkpoint: the model's parts (optimizer, schedule,
scaler, loss), the bookkeeping (RunState), and the random streams. Saving and restoring them is what makes a
resumed run end with the same weights as one that never stopped."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from alexnet_cli.artifacts.checkpoint import Checkpoint, TrainingState
from alexnet_cli.config.settings import SGD_MOMENTUM, TrainConfig
from alexnet_cli.data.augment import batch_mix, class_weights
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import ConfigError
from alexnet_cli.inference.evaluate import EvalResult
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.observer import Observer
from alexnet_cli.runtime import distributed as distmod
from alexnet_cli.runtime import seeds
from alexnet_cli.runtime.context import Runtime
from alexnet_cli.runtime.device import sum_dtype


def start_epoch_progress(epoch: int, partial: Mapping[str, Any] | None, dist: distmod.Dist,
                         observer: Observer) -> EpochProgress:
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
        totals = distmod.all_reduce_sum(torch.tensor(
            [self.loss_sum, self.correct, self.images], dtype=sum_dtype(device), device=device), dist)
        self.loss_sum, self.correct, self.images = totals[0].item(), int(totals[1]), int(totals[2])


@dataclass
class RunState:
    """What changes as a run goes on; all of it is saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0

    def record(self, epoch: int, progress: EpochProgress, result: EvalResult | None, lr: float
               ) -> tuple[dict[str, Any], bool]:
        """Close an epoch: its metrics row, and whether it is the best so far (validation accuracy, then loss).
        Without a validation set, nothing tells one epoch from another: each is the best so far, so best.pt is
        the last epoch (and the score reported is its training accuracy)."""
        train_loss = progress.loss_sum / max(1, progress.images)
        row: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": progress.correct / max(1, progress.images),
            "val_loss": None, "val_acc": None, "val_images": None, "lr": lr,
            "epoch_seconds": round(progress.seconds, 3),
            "images_per_second": round(progress.images / progress.seconds, 2) if progress.seconds > 0 else None,
        }
        if result is not None:
            row.update(val_loss=result.loss, val_acc=result.accuracy, val_images=result.images)
        score = (row["val_acc"], row["val_loss"]) if result is not None else (row["train_acc"], train_loss)
        improved = result is None or score[0] > self.best_acc or (score[0] == self.best_acc and
                                                                 score[1] < self.best_loss)
        self.epoch = epoch
        self.history.append(row)
        if improved:
            self.best_acc, self.best_loss, self.best_epoch, self.epochs_since_best = score[0], score[1], epoch, 0
        else:
            self.epochs_since_best += 1
        return row, improved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def make_optimizer(name: str, model, *, lr: float, weight_decay: float, device: torch.device):
    """Adam or SGD over the trainable parameters, with the fused (one-kernel) step on CPU and CUDA.

    The default per-parameter Adam step is a large share of a CPU's training iteration (58M parameters
    updated one tensor at a time); the fused step does it in one kernel (docs/performance.md).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = True if device.type in ("cpu", "cuda") else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


WARMUP_START = 0.01  # the warm-up's first factor, as torchvision's reference (lr_warmup_decay)


def lr_factor(step: int, *, scheduler: str, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """The learning rate at optimizer step `step` (from 0) as a fraction of --lr: a linear warm-up over the
    first `warmup_epochs`, times the schedule. step: /10 at each third of the epochs (the paper divided by 10
    three times), per epoch as before; cosine: from 1 to 0 over the steps after the warm-up."""
    warmup_steps = warmup_epochs * steps_per_epoch
    factor = 1.0
    if step < warmup_steps:
        factor = WARMUP_START + (1 - WARMUP_START) * step / warmup_steps
    if scheduler == "step":
        factor *= 0.1 ** ((step // steps_per_epoch) // max(1, epochs // 3))
    elif scheduler == "cosine":
        total = max(1, (epochs - warmup_epochs) * steps_per_epoch)
        done = min(total, max(0, step - warmup_steps))
        factor *= 0.5 * (1 + math.cos(math.pi * done / total))
    return factor


def make_scheduler(cfg: TrainConfig, optimizer, epochs: int, steps_per_epoch: int):
    """One LambdaLR stepped after every optimizer step (a step post-hook), so the schedule is smooth within
    an epoch and a run stopped mid-epoch resumes on the very step. None when the rate never changes."""

    if cfg.scheduler == "none" and cfg.warmup_epochs == 0:
        return None
    factor = functools.partial(lr_factor, scheduler=cfg.scheduler, epochs=epochs, steps_per_epoch=steps_per_epoch,
                               warmup_epochs=cfg.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    optimizer.register_step_post_hook(lambda *_: scheduler.step())
    return scheduler


def make_ema(model, decay: float, optimizer):
    """An exponential moving average of the weights (and buffers), updated after every optimizer step. Under
    torchrun every rank holds the same weights after a step, so every rank averages the same."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    optimizer.register_step_post_hook(lambda *_: ema.update_parameters(model))
    return ema


def make_criterion(cfg: TrainConfig, class_counts: list[int] | None, device):
    """Cross-entropy with label smoothing and, with --class-weights, a weight per class. It takes class
    indices or, under mixup and cutmix, per-class probabilities."""
    weight = None
    if cfg.class_weight_power > 0 and class_counts:
        weight = torch.tensor(class_weights(class_counts, cfg.class_weight_power), device=device)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


@dataclass
class TrainingParts:
    """The model and everything that trains it. `net` is what runs the steps: the model itself, or its
    DistributedDataParallel wrapper under torchrun."""

    model: nn.Module
    net: nn.Module  # the model, or DistributedDataParallel around it
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None  # None when the rate never changes
    scaler: torch.amp.GradScaler
    criterion: nn.CrossEntropyLoss
    ema: AveragedModel | None = None  # with --ema: what validation, best.pt and last.pt's weights use
    mix: Callable[..., Any] | None = None  # with --mixup or --cutmix: mixes each batch and its labels
    steps_per_epoch: int = 1  # this run's: each rank's share of the images, in batches

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved for evaluate and predict: the average with --ema."""
        return self.ema.module if self.ema is not None else self.model

    @classmethod
    def build(cls, cfg: TrainConfig, num_classes: int, runtime: Runtime, epochs: int, dist: distmod.Dist,
              steps_per_epoch: int, weights: Mapping[str, torch.Tensor] | None = None,
              class_counts: list[int] | None = None) -> TrainingParts:
        """A fresh model (ImageNet weights with --pretrained), or one with a checkpoint's `weights`."""
        device = runtime.device
        # A resumed run has its weights already; only a fresh one fetches the ImageNet weights (rank 0 first,
        # so that the ranks do not all download into the same cache at once).
        if dist.enabled and cfg.pretrained and weights is None:
            if dist.is_main:
                build_model(cfg.arch, num_classes=num_classes, pretrained=True)
            torch.distributed.barrier()
        model = build_model(cfg.arch, num_classes=num_classes, dropout=cfg.dropout,
                            pretrained=cfg.pretrained and weights is None)
        if weights is not None:
            model.load_state_dict(weights)
        if cfg.freeze_features:
            model.features.requires_grad_(False)  # the optimizer below only gets the classifier's parameters
        model.to(device, memory_format=torch.channels_last)  # NHWC: the layout oneDNN and cuDNN convolve fastest
        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_optimizer(cfg.optimizer, model, lr=cfg.effective_lr,
                                   weight_decay=cfg.effective_weight_decay, device=device)
        scheduler = make_scheduler(cfg, optimizer, epochs, steps_per_epoch)
        ema = make_ema(model, cfg.ema, optimizer) if cfg.ema > 0 else None
        # Loss scaling only for fp16: bf16 has fp32's range, so its gradients do not underflow.
        scaler = torch.amp.GradScaler(device.type, enabled=runtime.precision.name == "fp16")
        return cls(model, net, optimizer, scheduler, scaler, make_criterion(cfg, class_counts, device), ema,
                   batch_mix(cfg.mixup, cfg.cutmix, num_classes), steps_per_epoch)

    def restore(self, training: TrainingState, cfg: TrainConfig, device: torch.device,
                dist: distmod.Dist, average=None) -> RunState:
        """Continue where a checkpoint stopped: the optimizer's moments, the schedule, the scaler, the history
        and the random streams (rank 0's; the other ranks draw their own dropout masks)."""
        self.optimizer.load_state_dict(training.optimizer)
        state = RunState(**training.run_state)
        if self.scheduler is not None and training.scheduler:
            self.follow_schedule(self.schedule_step(training, state.epoch, dist))
        if self.ema is not None:
            if not training.ema:
                raise ConfigError(f"{cfg.resume} was trained without --ema, so there is no average to go on with")
            self.ema.module.load_state_dict(average)  # the checkpoint's model: the average
            self.ema.n_averaged.fill_(int(training.ema["n_averaged"]))
        if training.scaler:
            self.scaler.load_state_dict(training.scaler)
        restore_rng(training.rng, device)
        if dist.rank > 0:
            torch.manual_seed(seeds.rank_seed(cfg.seed, state.epoch, dist.rank))
        return state

    def schedule_step(self, training: TrainingState, epochs_done: int, dist: distmod.Dist) -> int:
        """Where a resumed run stands on its schedule, in this run's optimizer steps: the saved count with as
        many processes as the run had (inside an epoch too, bit for bit), or, with another number, the start of
        the next epoch at this run's steps per epoch (start_epoch_progress begins that epoch again): the same
        share of the images seen, whatever the processes."""
        saved_world = int(training.config.get("world_size") or 1)
        if saved_world == dist.world_size:
            return int(training.scheduler["last_epoch"]) if training.scheduler else 0
        return epochs_done * self.steps_per_epoch

    def follow_schedule(self, step: int) -> None:
        """Stand on this run's schedule at `step`: its step count, and each group's rate as the schedule gives
        it there. The rate is not the saved optimizer's: a run extended with a larger --epochs was planned for
        fewer, and its last rate (0 at the end of a cosine) is not the one a run planned for the new length has
        at that step. With the same plan the two are the same number, computed the same way."""
        if self.scheduler is None:
            return
        factor = self.scheduler.lr_lambdas[0](step)
        self.scheduler.last_epoch = step
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = group.setdefault("initial_lr", base) * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def epoch_lr(self, epoch: int) -> float:
        """The rate at `epoch`'s first step (with a schedule it changes every step): what metrics.csv records,
        the same for an epoch that a resume enters in its middle."""
        if self.scheduler is None:
            return self.lr()
        group = self.optimizer.param_groups[0]
        return group.get("initial_lr", self.scheduler.base_lrs[0]) * \
            self.scheduler.lr_lambdas[0]((epoch - 1) * self.steps_per_epoch)

    def checkpoint(self, cfg: TrainConfig, names: tuple[tuple[str, ...], tuple[str, ...]], preprocess: Preprocess,
                   state: RunState, config: dict[str, Any], device, partial: dict[str, Any] | None = None
                   ) -> Checkpoint:
        """Everything evaluate, predict and --resume need, as it stands now. `names`: the class folders, and
        their display names (or ())."""
        return Checkpoint(
            arch=cfg.arch, class_names=names[0], display_names=names[1], preprocess=preprocess, dropout=cfg.dropout,
            state_dict=self.model.state_dict() if self.ema is None else self.ema.module.state_dict(),
            training=TrainingState(
                epoch=state.epoch,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                rng=rng_state(device),
                run_state=vars(state).copy(),
                metrics=state.history[-1] if state.history else None,
                config=config,
                partial=partial,
                # With --ema the weights above are the average; the trained ones go on from here.
                ema=None if self.ema is None else {"weights": self.model.state_dict(),
                                                   "n_averaged": int(self.ema.n_averaged)},
            ),
        )


def fresh_rank_streams(cfg: TrainConfig, dist: distmod.Dist) -> None:
    """A fresh run's rank > 0: rank 0 broadcasts the weights, but each rank draws its own dropout masks."""
    if dist.rank > 0:
        torch.manual_seed(seeds.rank_seed(cfg.seed, 0, dist.rank))
