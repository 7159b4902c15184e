"""Training and evaluation: the loops, their metrics, and the bookkeeping of a run.

Data flows one way: config -> data -> model -> these loops -> run folder and an observer (console.py draws).
Nothing here imports Typer or draws; an `Observer` is told what happens.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from alexnet_cli import data as datamod
from alexnet_cli import distributed as distmod
from alexnet_cli import loading
from alexnet_cli.checkpoint import Checkpoint, atomic_write, base_payload, load_checkpoint, publish_copy, save_checkpoint
from alexnet_cli.config import DEFAULT_EPOCHS, SGD_MOMENTUM, EvaluateConfig, PredictConfig, TrainConfig
from alexnet_cli.device import Precision, resolve_device, resolve_precision, sum_dtype
from alexnet_cli.errors import AlexNetError, CheckpointError, ConfigError, DataError, NonFiniteLossError
from alexnet_cli.models import arch_info, build_model
from alexnet_cli.runs import new_run_dir, newest_checkpoint, write_json, write_metrics

if TYPE_CHECKING:
    import torch


class Observer(Protocol):
    """What the engine reports. console.RichObserver draws it; tests may record it."""

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def data_summary(self, classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int] | None,
                     val_source: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, iterations: int, images: int) -> None: ...
    def step(self, epoch: int, epochs: int, iteration: int, iterations: int, loss: float | None,
             images_per_second: float) -> None: ...
    def epoch_end(self, row: dict[str, Any], epochs: int, improved: bool) -> None: ...


# ---------------------------------------------------------------------------------------------- metrics


@dataclass
class EvalResult:
    class_names: tuple[str, ...]
    images: int
    loss: float
    confusion: list[list[int]]  # confusion[true][predicted]
    k: int
    topk_correct: int | None  # None where there are not more than k classes

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.confusion))) / max(1, self.images)

    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        n = len(self.class_names)
        for i, name in enumerate(self.class_names):
            tp = self.confusion[i][i]
            support = sum(self.confusion[i])
            predicted = sum(self.confusion[j][i] for j in range(n))
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
        return rows

    def to_dict(self) -> dict[str, Any]:
        per_class = self.per_class()
        present = [row for row in per_class if row["support"]]
        result = {
            "images": self.images,
            "loss": self.loss,
            "accuracy": self.accuracy,
            f"top{self.k}_accuracy": (self.topk_correct / max(1, self.images)) if self.topk_correct is not None else None,
            "macro_f1": sum(row["f1"] for row in present) / max(1, len(present)),
            "class_names": list(self.class_names),
            "per_class": per_class,
            "confusion_matrix": self.confusion,
        }
        return result


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithms for our fixed input size (one-off cost at the start)."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_device(batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A batch of images as the model wants it: on the device, channels_last (NHWC), in the model's dtype."""
    import torch

    return batch.to(device, dtype=dtype, non_blocking=True, memory_format=torch.channels_last)


def prepare_for_inference(model, device: torch.device, precision: Precision):
    """channels_last, and the weights themselves in bf16/fp16 when reduced: faster than autocast at inference,
    which re-casts every weight on every call (at batch 1 autocast measured slower than fp32)."""
    import torch

    model = model.to(device, memory_format=torch.channels_last).eval()
    return model.to(precision.dtype) if precision.reduced else model


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def report_unreadable(failed: Sequence[tuple[int, str]], strict: bool, observer: Observer) -> int:
    """Files that failed to open while loading: named one by one, or an error under --strict."""
    for _, error in failed:
        if strict:
            raise DataError(f"--strict: {error}")
        observer.warn(f"skipped {error}")
    return len(failed)


def evaluate_model(model, loader, device, num_classes: int, precision: Precision, k: int = 5, criterion=None,
                   on_failed=lambda failed: None, dist: distmod.Dist = distmod.SINGLE,
                   predictions: list[tuple[int, int, int]] | None = None) -> EvalResult:
    """Loss, confusion and top-k over a loader. A model already cast to bf16/fp16 runs as it is; an fp32 model
    (validation during training) runs under autocast when the precision is reduced."""
    import torch

    criterion = criterion or torch.nn.CrossEntropyLoss()
    dtype = _model_dtype(model)
    autocast = precision.autocast(device) if dtype == torch.float32 else contextlib.nullcontext()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    topk_correct = torch.zeros((), dtype=torch.long, device=device)
    use_topk = num_classes > k
    images = 0
    model.eval()
    with torch.inference_mode():
        for batch, labels, indices, failed in loader:
            on_failed(failed)
            if batch is None:
                continue
            batch = to_device(batch, device, dtype)
            labels = labels.to(device, non_blocking=True)
            with autocast:
                logits = model(batch)
            logits = logits.float()
            # Sum, not mean, so that a short last batch weighs what it holds.
            loss_sum += criterion(logits, labels).to(loss_sum.dtype) * labels.numel()
            predicted = logits.argmax(1)
            if predictions is not None:  # (dataset index, true, predicted) per image
                predictions.extend(zip(indices, labels.tolist(), predicted.tolist()))
            confusion += torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
            if use_topk:
                topk_correct += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
            images += labels.numel()
    if dist.enabled:  # each rank saw its own share of the images, each image once: sum the counts
        dtype = sum_dtype(device)
        counts = torch.cat([confusion.to(dtype), loss_sum.view(1), topk_correct.to(dtype).view(1),
                            torch.tensor([float(images)], dtype=dtype, device=device)])
        distmod.all_reduce_sum(counts, dist)
        n = num_classes * num_classes
        confusion, loss_sum, topk_correct = counts[:n].long(), counts[n], counts[n + 1].long()
        images = int(counts[n + 2].item())
    return EvalResult(
        class_names=(),
        images=images,
        loss=loss_sum.item() / max(1, images),
        confusion=confusion.view(num_classes, num_classes).tolist(),
        k=k,
        topk_correct=int(topk_correct.item()) if use_topk else None,
    )


# ---------------------------------------------------------------------------------------------- training


@dataclass
class RunState:
    """What changes as a run goes on; all of it is saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_acc: float
    stopped_early: bool
    history: tuple[dict[str, Any], ...] = ()


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state(device) -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device) -> None:
    import torch

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

    The default per-parameter Adam step took about a quarter of each training iteration on a 2-core CPU;
    the fused one measured 1.25 times faster overall (foreach gave nothing): docs/performance.md.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    fused = True if device.type in ("cpu", "cuda") else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


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


def _make_scheduler(cfg: TrainConfig, optimizer, epochs: int):
    import torch

    if cfg.scheduler == "step":
        # The paper divided the learning rate by 10 three times over training.
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return None


def _split_data(cfg: TrainConfig, observer: Observer, saved_split: Path | None, cache=None):
    """Training and validation ImageSets, and a one-line description of where validation came from. The scan
    fills `cache`, when there is one."""
    train = datamod.load_image_folder(cfg.data, strict=cfg.strict, cache=cache)
    if len(train.classes) < 2:
        raise DataError(f"{cfg.data} has only one class ({train.classes[0]}): a classifier needs at least two")
    val_dir = cfg.val
    if val_dir is None and cfg.val_split is None:
        val_dir = datamod.find_sibling_validation(Path(cfg.data))
    if val_dir is not None:
        found = datamod.find_classes(Path(val_dir))
        if set(found) != set(train.classes):
            raise DataError(
                f"validation classes differ from training classes: {val_dir} has {', '.join(found)}, "
                f"{cfg.data} has {', '.join(train.classes)}"
            )
        val = datamod.load_image_folder(val_dir, classes=train.classes, strict=cfg.strict, cache=cache)
        return train, val, f"folder {val_dir}", None
    if saved_split is not None and saved_split.is_file():
        train_part, val = datamod.split_from_file(train, saved_split)
        return train_part, val, f"the saved split {saved_split}", None
    fraction = 0.1 if cfg.val_split is None else cfg.val_split
    if fraction == 0:
        observer.warn("no validation set (--val-split 0): best.pt follows the training accuracy")
        return train, None, "none", None
    train_part, val = datamod.stratified_split(train, fraction, cfg.seed)
    return train_part, val, f"a {fraction:.0%} stratified split of {cfg.data} (seed {cfg.seed})", (fraction, val)


def _resume_config(cfg: TrainConfig, checkpoint: Checkpoint) -> TrainConfig:
    """A resumed run keeps its saved settings; only the data path, --epochs and where it runs may change."""
    saved = dict(checkpoint.raw.get("config") or {})
    if not saved or "optimizer" not in checkpoint.raw:
        raise CheckpointError(f"{checkpoint.path} holds weights but no training state, so it cannot be resumed")
    fields = {f for f in TrainConfig.__dataclass_fields__}
    saved = {k: v for k, v in saved.items() if k in fields}
    for key in ("data", "val", "output"):
        if saved.get(key) is not None:
            saved[key] = Path(saved[key])
    overrides = dict(
        device=cfg.device, no_cuda=cfg.no_cuda, precision=cfg.precision, workers=cfg.workers,
        log_interval=cfg.log_interval, cache=cfg.cache,
        resume=cfg.resume, epochs=cfg.epochs or saved.get("epochs"),
        output=cfg.output or checkpoint.path.parent,
    )
    if cfg.data is not None:
        overrides["data"] = cfg.data
    try:
        return replace(TrainConfig(**saved), **overrides)
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint.path} has a damaged config: {exc}") from None


class SilentObserver:
    """An observer that shows nothing: every torchrun rank but 0, and callers that only want the results."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def train(cfg: TrainConfig, observer: Observer) -> TrainResult:
    """Train as one process, or as one rank of a torchrun launch (see distributed.py)."""
    dist = distmod.from_env()
    choice = distmod.resolve_device_for(dist, cfg.device, cfg.no_cuda)
    with distmod.process_group(dist, choice.device):
        return _train(cfg, observer if dist.is_main else SilentObserver(), dist, choice)


def _train(cfg: TrainConfig, observer: Observer, dist: distmod.Dist, choice) -> TrainResult:
    import torch

    checkpoint = load_checkpoint(cfg.resume) if cfg.resume else None
    if checkpoint is not None:
        cfg = _resume_config(cfg, checkpoint)
    if cfg.data is None:
        raise ConfigError("give the training folder: alexnet train DATA")
    epochs = cfg.epochs or DEFAULT_EPOCHS

    device = choice.device
    if cfg.tensorboard:
        from alexnet_cli import tboard

        tboard.check_available()  # before anything is written
    observer.info(f"device: {choice.reason}")
    precision = resolve_precision(cfg.precision, device)
    observer.info(f"precision: {precision.reason}")
    configure_backends(device)
    _seed_everything(cfg.seed)

    info = arch_info(cfg.arch)
    preprocess = datamod.Preprocess.for_arch(cfg.effective_image_size, info.default_image_size)
    cache = datamod.make_cache(cfg.cache, preprocess, dist.local_world_size)
    saved_split = Path(cfg.output) / "split.json" if checkpoint is not None else None
    train_set, val_set, val_source, split = _split_data(cfg, observer, saved_split, cache)
    for skipped in train_set.skipped + (val_set.skipped if val_set else ()):
        observer.warn(f"skipped {skipped}")
    observer.data_summary(train_set.classes, train_set.counts(), val_set.counts() if val_set else None, val_source)
    if checkpoint is not None and tuple(train_set.classes) != checkpoint.class_names:
        raise DataError(
            f"the data's classes ({', '.join(train_set.classes)}) differ from the checkpoint's "
            f"({', '.join(checkpoint.class_names)})"
        )

    if cache is not None:
        observer.info(cache.describe())
        if not cache.accepting:
            cache = None
    num_classes = len(train_set.classes)
    # A resumed run has its weights already; only a fresh one fetches the ImageNet weights (rank 0 first, so
    # that the ranks do not all download into the same cache at once).
    if dist.enabled and cfg.pretrained and checkpoint is None:
        if dist.is_main:
            build_model(cfg.arch, num_classes=num_classes, pretrained=True)
        torch.distributed.barrier()
    model = build_model(cfg.arch, num_classes=num_classes, dropout=cfg.dropout,
                        pretrained=cfg.pretrained and checkpoint is None)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.state_dict)
    if cfg.freeze_features:
        model.features.requires_grad_(False)  # the optimizer below only gets the classifier's parameters
    model.to(device, memory_format=torch.channels_last)  # NHWC: the layout oneDNN and cuDNN convolve fastest
    net = model  # what trains: the model itself, or its DistributedDataParallel wrapper
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg.optimizer, model, lr=cfg.effective_lr, weight_decay=cfg.effective_weight_decay,
                               device=device)
    scheduler = _make_scheduler(cfg, optimizer, epochs)
    # Loss scaling only for fp16: bf16 has fp32's range, so its gradients do not underflow.
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    state = RunState()

    if checkpoint is not None:
        raw = checkpoint.raw
        optimizer.load_state_dict(raw["optimizer"])
        if scheduler is not None and raw.get("scheduler"):
            scheduler.load_state_dict(raw["scheduler"])
            if cfg.scheduler == "cosine":
                scheduler.T_max = epochs  # a run extended with a larger --epochs anneals over the new length
        if raw.get("scaler"):
            scaler.load_state_dict(raw["scaler"])
        state = RunState(**raw["run_state"])
        _restore_rng(raw["rng"], device)
        if dist.rank > 0:  # the checkpoint holds rank 0's random state; the others draw their own dropout masks
            torch.manual_seed(cfg.seed * 1_000_003 + state.epoch * 1_009 + dist.rank)
        if state.epoch >= epochs:
            raise ConfigError(
                f"{cfg.resume} already finished {state.epoch} epochs: pass --epochs greater than {state.epoch} to extend it"
            )
        observer.info(f"resuming {cfg.resume} at epoch {state.epoch + 1} of {epochs}")

    elif dist.rank > 0:
        torch.manual_seed(cfg.seed * 1_000_003 + dist.rank)  # rank 0 broadcasts the weights; dropout differs

    # The run folder is made only now that the data and options have passed every check: a failed start
    # leaves no empty runs/train-N behind. Under torchrun, rank 0 alone writes it.
    if dist.is_main:
        run_dir = Path(cfg.output) if cfg.output else new_run_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(cfg.output or "runs")
    config_record = {**cfg.to_dict(), "epochs": epochs, "output": run_dir.as_posix(), "resume": None,
                     "world_size": dist.world_size}
    if dist.is_main:
        write_json(run_dir / "config.json",
                   {**config_record, "validation": val_source, "class_names": list(train_set.classes)})
        if split is not None:
            write_json(run_dir / "split.json", datamod.split_record(split[1], split[0], cfg.seed))
    observer.info(f"run folder: {run_dir}")
    if cfg.tensorboard and dist.is_main:
        observer = tboard.TensorBoardObserver(observer, run_dir / "tensorboard")
        observer.info(f"tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")
    if dist.enabled:
        observer.info(f"{dist.world_size} processes, batch {cfg.batch_size} each: {dist.world_size * cfg.batch_size} "
                      "images per step")

    pin = device.type == "cuda"
    workers = loading.default_workers() if cfg.workers is None else cfg.workers
    # JPEGs much larger than the input decode at a reduced scale that still covers the resize.
    draft = preprocess.resize_size
    train_paths = [path for path, _ in train_set.samples]
    train_labels = [label for _, label in train_set.samples]
    on_failed = lambda failed: report_unreadable(failed, cfg.strict, observer)  # noqa: E731
    val_loader = None
    if val_set is not None:
        val_loader = loading.make_loader(
            [p for p, _ in val_set.samples], [lab for _, lab in val_set.samples], preprocess.eval_transforms(),
            batch_size=cfg.batch_size, workers=workers, pin_memory=pin, draft_size=draft,
            order=distmod.eval_shard(len(val_set.samples), dist) if dist.enabled else None,
            cache=cache, augment=preprocess.eval_augment(), warn=observer.warn,
        )
    sampler = loading.EpochSampler()
    train_loader = loading.make_loader(
        train_paths, train_labels, preprocess.train_transforms(), batch_size=cfg.batch_size, workers=workers,
        pin_memory=pin, order=sampler, draft_size=draft, cache=cache, augment=preprocess.train_augment(),
        warn=observer.warn,
    )

    if cfg.tensorboard and dist.is_main:
        observer.samples(train_paths, train_labels, train_set.classes, preprocess)

    def checkpoint_payload(epoch: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        payload = base_payload(
            arch=cfg.arch, class_names=train_set.classes, preprocess=preprocess, dropout=cfg.dropout,
            model_state=model.state_dict(),
        )
        payload.update(
            epoch=epoch,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            rng=_rng_state(device),
            run_state=vars(state).copy(),
            metrics=state.history[-1] if state.history else None,
            config=config_record,
            partial=partial,  # set when the run stopped inside an epoch
        )
        return payload

    partial = checkpoint.raw.get("partial") if checkpoint is not None else None
    stopped_early = False
    # Leaving this block, by the end of the run, a signal or an error, stops the loader processes.
    with graceful_interrupts() as interrupts, train_loader, val_loader or contextlib.nullcontext():
        # Every rank stops at the same step when any of them is signalled (one all-reduce per step).
        should_stop = lambda: distmod.any_rank(bool(interrupts), device, dist)  # noqa: E731
        while state.epoch < epochs:
            epoch = state.epoch + 1
            progress = _epoch_progress(epoch, partial, dist, observer)
            partial = None
            shard = distmod.train_shard(len(train_paths), cfg.seed, epoch, dist)
            sampler.set_epoch(shard[progress.iteration * cfg.batch_size:], augment_seed=cfg.seed * 100_003 + epoch)
            iterations = math.ceil(len(shard) / cfg.batch_size)
            stopped = _train_one_epoch(
                net, train_loader, optimizer, scaler, criterion, device, precision, progress,
                iterations, epochs, cfg.log_interval, observer, on_failed, should_stop, dist.enabled,
            )
            # The epoch's totals over every rank (one process: as they are).
            totals = distmod.all_reduce_sum(torch.tensor(
                [progress.loss_sum, progress.correct, progress.images], dtype=sum_dtype(device), device=device), dist)
            progress.loss_sum, progress.correct, progress.images = totals[0].item(), int(totals[1]), int(totals[2])
            if stopped:
                # Stopped between two steps: save where we are, so that --resume continues from this step.
                if dist.is_main:
                    save_checkpoint(run_dir / "last.pt", checkpoint_payload(
                        state.epoch, {**progress.to_dict(), "world_size": dist.world_size}))
                signum = interrupts[0] if interrupts else signal.SIGTERM
                name = signal.Signals(signum).name
                raise TrainingInterrupted(
                    f"stopped by {name} at epoch {epoch}, iteration {progress.iteration}/{iterations}; saved "
                    f"{run_dir / 'last.pt'}. Resume with: alexnet train --resume {run_dir / 'last.pt'}",
                    exit_code=128 + signum,
                )

            lr = optimizer.param_groups[0]["lr"]
            train_loss = progress.loss_sum / max(1, progress.images)
            row: dict[str, Any] = {
                "epoch": epoch, "train_loss": train_loss, "train_acc": progress.correct / max(1, progress.images),
                "val_loss": None, "val_acc": None, "val_images": None, "lr": lr,
                "epoch_seconds": round(progress.seconds, 3),
                "images_per_second": round(progress.images / progress.seconds, 2) if progress.seconds > 0 else None,
            }
            result = None
            if val_loader is not None:
                result = evaluate_model(model, val_loader, device, num_classes, precision, criterion=criterion,
                                        on_failed=on_failed, dist=dist)
                row.update(val_loss=result.loss, val_acc=result.accuracy, val_images=result.images)
            if scheduler is not None:
                scheduler.step()

            score = (row["val_acc"], row["val_loss"]) if val_loader is not None else (row["train_acc"], train_loss)
            improved = score[0] > state.best_acc or (score[0] == state.best_acc and score[1] < state.best_loss)
            state.epoch = epoch
            state.history.append(row)
            if improved:
                state.best_acc, state.best_loss, state.best_epoch, state.epochs_since_best = score[0], score[1], epoch, 0
            else:
                state.epochs_since_best += 1

            if dist.is_main:
                save_checkpoint(run_dir / "last.pt", checkpoint_payload(epoch, None))
                if improved:
                    try:
                        publish_copy(run_dir / "last.pt", run_dir / "best.pt")
                    except CheckpointError as exc:  # a locked best.pt must not end a run that can go on
                        observer.warn(f"{exc}; best.pt was not updated, last.pt holds epoch {epoch}")
                    if result is not None:  # the best epoch's validation confusion, for the plots
                        write_json(run_dir / "confusion.json", {
                            "epoch": epoch, "class_names": list(train_set.classes),
                            "confusion_matrix": result.confusion})
                write_metrics(run_dir / "metrics.csv", state.history)
            observer.epoch_end(row, epochs, improved)

            if cfg.patience is not None and state.epochs_since_best >= cfg.patience:
                observer.info(
                    f"early stop: no better validation accuracy for {cfg.patience} epochs "
                    f"(best at epoch {state.best_epoch})"
                )
                stopped_early = True
                break

    if dist.is_main:
        _draw_plots(run_dir, observer)
        if cfg.tensorboard:
            observer.close()
    return TrainResult(run_dir, state.epoch, state.best_epoch, state.best_acc, stopped_early,
                       tuple(state.history))


def _draw_plots(run_dir: Path, observer: Observer) -> None:
    """curves.png and confusion_matrix.png in the run folder, or one line on how to get them."""
    from alexnet_cli import plots

    try:
        written = plots.plot_run(run_dir)
    except plots.PlotsUnavailable as exc:
        observer.info(str(exc))
        return
    observer.info("plots: " + ", ".join(str(p) for p in written))


def _epoch_progress(epoch: int, partial: dict[str, Any] | None, dist: distmod.Dist, observer) -> EpochProgress:
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


def _train_one_epoch(model, loader, optimizer, scaler, criterion, device, precision, progress: EpochProgress,
                     iterations: int, epochs: int, log_interval: int, observer: Observer, on_failed,
                     should_stop: Callable[[], bool], distributed: bool = False) -> bool:
    """One epoch (or the rest of one); returns True when a signal stopped it between two steps."""
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
            loss, logits = train_step(model, batch, labels, optimizer, scaler, criterion, precision)
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


# ---------------------------------------------------------------------------------------------- evaluation


def resolve_weights(weights: Path | None, observer: Observer, alternative: str = "") -> Path:
    if weights is not None:
        return weights
    path = newest_checkpoint(alternative=alternative)
    observer.info(f"using the newest run's checkpoint: {path}")
    return path


def evaluate(cfg: EvaluateConfig, observer: Observer) -> EvalResult:
    choice = resolve_device(cfg.device, no_cuda=cfg.no_cuda)
    precision = resolve_precision(cfg.precision, choice.device)
    checkpoint = load_checkpoint(resolve_weights(cfg.weights, observer))
    observer.info(f"device: {choice.reason}")
    observer.info(f"precision: {precision.reason}")
    configure_backends(choice.device)
    # One pass over the data: no separate scan; the loader names and skips bad files as it meets them.
    images = datamod.load_image_folder(cfg.data, classes=checkpoint.class_names, strict=cfg.strict, scan=False)
    for skipped in images.skipped:
        observer.warn(f"skipped {skipped}")
    model = prepare_for_inference(checkpoint.build(), choice.device, precision)
    loader = loading.make_loader(
        [p for p, _ in images.samples], [lab for _, lab in images.samples], checkpoint.preprocess.eval_transforms(),
        batch_size=cfg.batch_size, workers=loading.default_workers() if cfg.workers is None else cfg.workers,
        pin_memory=choice.device.type == "cuda", draft_size=checkpoint.preprocess.resize_size, warn=observer.warn,
    )
    predictions: list[tuple[int, int, int]] | None = [] if cfg.save_errors is not None else None
    with loader:
        result = evaluate_model(model, loader, choice.device, checkpoint.num_classes, precision, k=cfg.top_k,
                                on_failed=lambda failed: report_unreadable(failed, cfg.strict, observer),
                                predictions=predictions)
    result.class_names = checkpoint.class_names
    if predictions is not None:
        saved = save_errors(cfg.save_errors, [p for p, _ in images.samples], predictions, checkpoint.class_names)
        observer.info(f"misclassified: {saved} images linked into {cfg.save_errors}/<true>__as__<predicted>/")
    if images.skipped:
        observer.warn(f"{len(images.skipped)} files skipped")
    return result


def save_errors(folder: Path, paths: Sequence[str], predictions: Sequence[tuple[int, int, int]],
                class_names: Sequence[str]) -> int:
    """Link (or copy) each misclassified image into folder/<true>__as__<predicted>/; the number placed."""
    from alexnet_cli.pets import place_file

    placed = 0
    for index, true, predicted in predictions:
        if true == predicted:
            continue
        target_dir = Path(folder) / f"{class_names[true]}__as__{class_names[predicted]}"
        target_dir.mkdir(parents=True, exist_ok=True)
        source = Path(paths[index])
        target = target_dir / source.name
        n = 2
        while target.exists() or target.is_symlink():  # two files of one name from different sub-folders
            target = target_dir / f"{source.stem}-{n}{source.suffix}"
            n += 1
        place_file(source, target)
        placed += 1
    return placed


# ---------------------------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Predictor:
    model: Any
    class_names: tuple[str, ...]
    preprocess: datamod.Preprocess
    source: str


def load_predictor(weights: Path | None, pretrained: bool, observer: Observer) -> Predictor:
    """A trained checkpoint (the newest run's best.pt by default), or torchvision's ImageNet weights."""
    if pretrained:
        from torchvision.models import AlexNet_Weights

        spec = AlexNet_Weights.IMAGENET1K_V1
        transforms = spec.transforms()  # the weights' own preprocessing, not ours
        preprocess = datamod.Preprocess(
            image_size=transforms.crop_size[0], resize_size=transforms.resize_size[0], mean=tuple(transforms.mean),
            std=tuple(transforms.std), interpolation=transforms.interpolation.value,
        )
        model = build_model("alexnet-torchvision", pretrained=True).eval()
        return Predictor(model, tuple(spec.meta["categories"]), preprocess, "ImageNet weights (IMAGENET1K_V1)")
    checkpoint = load_checkpoint(resolve_weights(weights, observer, alternative=" or --pretrained for ImageNet"))
    return Predictor(checkpoint.build(), checkpoint.class_names, checkpoint.preprocess, str(checkpoint.path))


def _write_explanation(explain, path: str, cam, preprocess, folder: Path, result: dict[str, Any],
                       taken: set[str]) -> Path:
    """One PNG: the original image, at its own size, with the Grad-CAM of the predicted class over it."""
    image = datamod.open_image(path)
    heat = explain.full_size_cam(cam, image.width, image.height, preprocess)
    caption = f"{result['label']} {result['confidence']:.1%}"
    target = explain.output_name(folder, path, result["label"], result["confidence"], taken)
    picture = explain.overlay(image, heat, caption)
    atomic_write(target, lambda file: picture.save(file, format="PNG"))
    return target


def predict(cfg: PredictConfig, observer: Observer) -> list[dict[str, Any]]:
    """One result per readable image: path, label, confidence and the top-k labels with probabilities."""
    import torch

    paths, problems = datamod.expand_inputs(cfg.inputs)
    for problem in problems:
        observer.warn(problem)
    if not paths:
        raise DataError("nothing to predict: none of the inputs is an image, a folder of images or a matching glob")
    choice = resolve_device(cfg.device, no_cuda=cfg.no_cuda)
    device = choice.device
    # Grad-CAM's gradients are taken in fp32.
    precision = resolve_precision("fp32" if cfg.explain is not None else cfg.precision, device)
    predictor = load_predictor(cfg.weights, cfg.pretrained, observer)
    observer.info(f"device: {choice.reason}")
    observer.info(f"precision: {precision.reason}")
    configure_backends(device)
    model = prepare_for_inference(predictor.model, device, precision)
    loader = loading.make_loader(
        paths, None, predictor.preprocess.eval_transforms(), batch_size=cfg.batch_size,
        workers=loading.default_workers() if cfg.workers is None else cfg.workers, pin_memory=device.type == "cuda",
        draft_size=predictor.preprocess.resize_size, warn=observer.warn,
    )
    k = min(cfg.top_k, len(predictor.class_names))
    explain_dir = cfg.explain
    if explain_dir is not None:
        from alexnet_cli import explain

        explain_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
    results: list[dict[str, Any]] = []
    skipped = 0
    # Grad-CAM needs gradients; plain prediction runs without autograd at all.
    with torch.inference_mode(explain_dir is None), loader:
        for images, _, indices, failed in loader:
            skipped += report_unreadable(failed, cfg.strict, observer)
            if images is None:
                continue
            batch = to_device(images, device, precision.dtype)
            if explain_dir is not None:
                cams, logits = explain.grad_cam(model, batch)
            else:
                logits = model(batch)
            probabilities = logits.float().softmax(dim=1)
            top = probabilities.topk(k, dim=1)
            for row, (index, values, classes) in enumerate(zip(indices, top.values.tolist(), top.indices.tolist())):
                ranked = [{"label": predictor.class_names[c], "probability": p} for p, c in zip(values, classes)]
                result = {"path": paths[index], "label": ranked[0]["label"], "confidence": ranked[0]["probability"],
                          "top_k": ranked}
                if explain_dir is not None:
                    result["explanation"] = str(_write_explanation(
                        explain, paths[index], cams[row], predictor.preprocess, explain_dir, result, taken))
                results.append(result)
    if not results:
        raise DataError(f"none of the {len(paths)} files could be read as an image")
    if skipped:
        observer.warn(f"{skipped} of {len(paths)} files skipped")
    return results
