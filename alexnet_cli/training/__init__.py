"""Training: `fit` reads as the run it makes, phase by phase; each phase lives in a module of this package.

  setup.py  the resumed run's settings, the data sets (listed from their index, cached), the loaders
  state.py  the model's parts, the run's bookkeeping and random streams, saved and restored
  loop.py   one step, one epoch, and stopping between two steps on a signal
  run.py    what each epoch does once the run is set up

Data flows one way: config -> data -> model -> these loops -> run folder (runs.RunFolder) and an observer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alexnet_cli import __version__
from alexnet_cli.artifacts.run_folder import RUNS_ROOT, RunFolder, refuse_a_run_there
from alexnet_cli.config.settings import DEFAULT_EPOCHS, TrainConfig
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import ConfigError
from alexnet_cli.models.registry import arch_info, auto_frame, auto_image_size
from alexnet_cli.observer import Observer, SilentObserver
from alexnet_cli.reporting import tensorboard as tboard
from alexnet_cli.runtime import distributed as distmod
from alexnet_cli.runtime.context import Runtime, resolve_runtime
from alexnet_cli.runtime.device import resolve_device
from alexnet_cli.runtime.files import check_writable
from alexnet_cli.training.loop import TrainingInterrupted, graceful_interrupts, train_step
from alexnet_cli.training.lrfind import find_lr, set_lr
from alexnet_cli.training.run import Run
from alexnet_cli.training.setup import TrainingData, list_folders, make_loaders, prepare_data, resume
from alexnet_cli.training.state import RunState, TrainingParts, fresh_rank_streams, make_optimizer, seed_everything

__all__ = ["TrainResult", "TrainingInterrupted", "fit", "make_optimizer", "train",
           "train_step"]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_acc: float
    stopped_early: bool
    history: tuple[dict[str, Any], ...] = ()
    checkpoint_waits: tuple[float, ...] = ()  # per epoch: seconds the loop waited for its checkpoint


def train(cfg: TrainConfig, observer: Observer) -> TrainResult:
    """Train as one process, or as one rank of a torchrun launch (see distributed.py)."""
    dist = distmod.from_env()
    choice = resolve_device(cfg.device, no_cuda=cfg.no_cuda, dist=dist)
    with distmod.process_group(dist, choice.device):
        return fit(cfg, observer if dist.is_main else SilentObserver(), dist, choice)


def fit(cfg: TrainConfig, observer: Observer, dist: distmod.Dist = distmod.SINGLE, choice=None) -> TrainResult:
    # Resume: the saved settings, but for the data path, --epochs and where and how it runs now.
    checkpoint, cfg = resume(cfg)
    epochs = _epochs(cfg)
    if dist.is_main:  # a read-only place fails now, not after the index, the cache and the model
        check_writable(cfg.output or RUNS_ROOT, "the run folder")
        if checkpoint is None:
            refuse_a_run_there(cfg.output)
        output = Path(cfg.output or RUNS_ROOT).resolve()
        if cfg.data is not None and output.is_relative_to(Path(cfg.data).resolve()):
            raise ConfigError(f"the run folder {cfg.output or RUNS_ROOT} is inside the training folder {cfg.data}: "
                              "its files would be read as a class next time; give --output outside it")
    # Runtime: the checks that need no data come first, so that a wrong option fails in a second.
    runtime = _runtime(cfg, choice, observer)
    # Data: listed from the folders' index (bad files named), then decoded into the cache where it fits;
    # the input size follows the images' sizes; nothing is written yet.
    folders = list_folders(cfg, checkpoint, dist, observer)
    cfg = _input(cfg, folders.median_side(), observer)
    data = prepare_data(cfg, folders, checkpoint, dist, observer)
    # Model parts, and the state to go on from: a checkpoint's, or a fresh one.
    parts = TrainingParts.build(cfg, len(data.classes), runtime, epochs, dist,
                                steps_per_epoch(len(data.train), cfg.batch_size, dist),
                                weights=_trained_weights(checkpoint), class_counts=data.train.counts())
    state = _state(parts, checkpoint, cfg, epochs, runtime, dist, observer)
    if cfg.lr_find and checkpoint is None:
        cfg = _find_lr(cfg, data, runtime, parts, dist, observer)
    # The run folder, now that every check has passed; rank 0 alone writes it.
    folder = RunFolder.open(cfg.output, writes=dist.is_main)
    config = _write_config(folder, cfg, epochs, data, dist)
    observer = _announce(folder, cfg, dist, observer)
    run = Run(cfg, epochs, runtime, data, parts, state, folder, config, dist, observer)
    partial = checkpoint.training.partial if checkpoint is not None and checkpoint.training is not None else None
    stopped_early = False
    # Checkpoints are written while the next epoch trains; the optimizer's step waits until they are read.
    folder.guard(parts.optimizer)
    # Leaving this block, by the end of the run, a signal or an error, stops the loader processes and waits
    # for the checkpoint in flight.
    with graceful_interrupts() as interrupts, make_loaders(cfg, data, runtime, dist, observer) as loaders, \
            folder.writing(observer):
        _show_samples(run)
        while state.epoch < epochs:
            progress, iterations = run.start_epoch(loaders, partial)
            partial = None
            lr = parts.epoch_lr(progress.epoch)  # what metrics.csv records, also for an epoch resumed inside
            if run.train_epoch(loaders, progress, iterations, interrupts):
                raise run.stop(progress, iterations, interrupts)
            run.finish_epoch(progress, lr, run.validate(loaders))
            if run.patience_ran_out():
                stopped_early = True
                break
    run.finish()
    return TrainResult(folder.path, state.epoch, state.best_epoch, state.best_acc, stopped_early,
                       tuple(state.history), tuple(folder.writer.waits))


def steps_per_epoch(images: int, batch_size: int, dist: distmod.Dist) -> int:
    """Optimizer steps per epoch: each rank's equal share of the images, in batches."""
    return math.ceil(math.ceil(images / dist.world_size) / batch_size)


def _trained_weights(checkpoint):
    """The weights training goes on from: with --ema the checkpoint's model is the average, and the trained
    weights are kept beside it."""
    if checkpoint is None:
        return None
    ema = checkpoint.training.ema if checkpoint.training is not None else None
    return ema["weights"] if ema else checkpoint.state_dict


def _find_lr(cfg: TrainConfig, data: TrainingData, runtime: Runtime, parts: TrainingParts, dist: distmod.Dist,
             observer: Observer) -> TrainConfig:
    """--lr find: the LR range test on this run's model and data, then train at its suggestion. The model,
    optimizer and random streams are as they were before it."""
    if dist.enabled:
        raise ConfigError("--lr find runs in one process: find the rate with alexnet lr-find, then pass --lr")
    result = find_lr(parts, data, runtime, cfg, observer)
    set_lr(parts, result.suggestion)
    observer.info(f"--lr find chose {result.suggestion:.2e} ({result.rule}; the loss was lowest at "
                  f"{result.suggestion * 10:.2e} over {len(result.lrs)} steps)")
    return replace(cfg, lr=result.suggestion)


def lr_find(cfg: TrainConfig, observer: Observer, steps: int = 100, start: float = 1e-7, end: float = 1.0):
    """`alexnet lr-find DATA`: the LR range test on a fresh model and the training data, nothing written."""
    _epochs(cfg)
    runtime = _runtime(cfg, None, observer)
    folders = list_folders(cfg, None, distmod.SINGLE, observer)
    cfg = _input(cfg, folders.median_side(), observer)
    data = prepare_data(cfg, folders, None, distmod.SINGLE, observer)
    parts = TrainingParts.build(cfg, len(data.classes), runtime, 1, distmod.SINGLE,
                                steps_per_epoch(len(data.train), cfg.batch_size, distmod.SINGLE),
                                class_counts=data.train.counts())
    return find_lr(parts, data, runtime, cfg, observer, steps=steps, start=start, end=end)


def _input(cfg: TrainConfig, side: int | None, observer: Observer) -> TrainConfig:
    """--image-size and --frame left out: the arch's own size and the paper's crop, or for small images a
    smaller size and the whole frame (models.auto_image_size, auto_frame), chosen from the training images'
    median short side (`side`, from their headers) before anything is decoded."""
    if cfg.image_size is not None and cfg.frame is not None:
        return cfg
    size = cfg.image_size or auto_image_size(cfg.arch, side)
    native = arch_info(cfg.arch).default_image_size
    if cfg.image_size is None and size != native:
        observer.info(f"image size: {size} (the images are small, {side} pixels on their short side, and "
                      f"{cfg.arch}'s own {native} trains about half as fast; --image-size sets it)")
    resolved = replace(cfg, image_size=size, frame=cfg.frame or auto_frame(side))
    if cfg.frame is None and resolved.frame == "full":
        pad = Preprocess.for_training(resolved).pad
        observer.info(f"frame: full (the images are small: each is resized whole to {size} and training shifts "
                      f"it within a border of {pad} pixels, where the paper's crop would cut off its edges; "
                      "--frame crop sets the paper's)")
    return resolved


def _epochs(cfg: TrainConfig) -> int:
    if cfg.data is None:
        raise ConfigError("give the training folder: alexnet train DATA")
    return cfg.epochs or DEFAULT_EPOCHS


def _runtime(cfg: TrainConfig, choice, observer: Observer) -> Runtime:
    """Device, precision and loaders, said in two lines; then the run's random streams are seeded."""
    if cfg.tensorboard:
        tboard.check_available()  # before anything is written
    runtime = resolve_runtime(cfg.device, cfg.no_cuda, cfg.precision, cfg.workers, choice)
    runtime.report(observer)
    seed_everything(cfg.seed)
    return runtime


def _state(parts: TrainingParts, checkpoint, cfg: TrainConfig, epochs: int, runtime: Runtime,
           dist: distmod.Dist, observer: Observer) -> RunState:
    if checkpoint is None:
        fresh_rank_streams(cfg, dist)
        return RunState()
    training = checkpoint.training
    state = parts.restore(training, cfg, runtime.device, dist, average=checkpoint.state_dict)
    observer.info(f"resuming {cfg.resume} at epoch {state.epoch + 1} of {epochs}")
    planned = int(training.config.get("epochs") or epochs)
    if planned != epochs and parts.scheduler is not None:
        observer.info(f"extending the run from {planned} to {epochs} epochs: from epoch {state.epoch + 1} on, the "
                      f"learning rate follows the schedule of a run planned for {epochs} (now {parts.lr():.3g}); "
                      f"the epochs already trained followed the {planned}-epoch one")
    saved_world = int(training.config.get("world_size") or 1)
    if saved_world != dist.world_size:
        observer.info(f"resuming with {dist.world_size} processes where the run had {saved_world}: the schedule "
                      f"goes on from the start of epoch {state.epoch + 1}, at {parts.steps_per_epoch} steps an "
                      "epoch, the same share of the images seen")
    return state


def _write_config(folder: RunFolder, cfg: TrainConfig, epochs: int, data: TrainingData,
                  dist: distmod.Dist) -> dict[str, Any]:
    """config.json (and split.json for a split made now); returns the settings every checkpoint records."""
    config = {**cfg.to_dict(), **data.augmentation.to_dict(), "epochs": epochs, "output": folder.path.as_posix(),
              "resume": None, "world_size": dist.world_size}
    folder.write_json("config.json", {**config, "tool_version": __version__, "validation": data.val_source,
                                      "validation_folder": str(data.val_dir) if data.val_dir else None,
                                      "class_names": list(data.classes),
                                      "display_names": list(data.display_names)})
    if data.split is not None:
        folder.write_json("split.json", data.split.record(cfg.seed))
    return config


def _announce(folder: RunFolder, cfg: TrainConfig, dist: distmod.Dist, observer: Observer) -> Observer:
    """Say where the run goes; with --tensorboard, the observer that also logs there."""
    observer.info(f"run folder: {folder.path}")
    if cfg.tensorboard and dist.is_main:
        observer = tboard.TensorBoardObserver(observer, folder.path / "tensorboard")
        observer.info(f"tensorboard: tensorboard --logdir {folder.path / 'tensorboard'}")
    if dist.enabled:
        observer.info(f"{dist.world_size} processes, batch {cfg.batch_size} each: "
                      f"{dist.world_size * cfg.batch_size} images per step")
    return observer


def _show_samples(run: Run) -> None:
    """With --tensorboard: a grid of training images as the model sees them."""
    if isinstance(run.observer, tboard.TensorBoardObserver):
        train = run.data.train
        run.observer.samples(train.paths, train.labels.tolist(), run.data.classes, run.data.preprocess)
