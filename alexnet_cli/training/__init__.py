"""Training: `fit` reads as the run it makes, phase by phase; each phase lives in a module of this package.

  setup.py  the resumed run's settings, the scanned data sets, the loaders
  state.py  the model's parts, the run's bookkeeping and random streams, saved and restored
  loop.py   one step, one epoch, and stopping between two steps on a signal
  run.py    what each epoch does once the run is set up

Data flows one way: config -> data -> model -> these loops -> run folder (runs.RunFolder) and an observer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet_cli import distributed as distmod
from alexnet_cli.config import DEFAULT_EPOCHS, TrainConfig
from alexnet_cli.errors import ConfigError
from alexnet_cli.observer import Observer, SilentObserver
from alexnet_cli.runs import RunFolder
from alexnet_cli.runtime import Runtime, resolve_runtime
from alexnet_cli.training.loop import TrainingInterrupted, graceful_interrupts, train_one_epoch, train_step
from alexnet_cli.training.run import Run
from alexnet_cli.training.setup import TrainingData, make_loaders, prepare_data, resume
from alexnet_cli.training.state import RunState, TrainingParts, fresh_rank_streams, make_optimizer, seed_everything

__all__ = ["TrainResult", "TrainingInterrupted", "fit", "make_optimizer", "train", "train_one_epoch",
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
    choice = distmod.resolve_device_for(dist, cfg.device, cfg.no_cuda)
    with distmod.process_group(dist, choice.device):
        return fit(cfg, observer if dist.is_main else SilentObserver(), dist, choice)


def fit(cfg: TrainConfig, observer: Observer, dist: distmod.Dist = distmod.SINGLE, choice=None) -> TrainResult:
    # Resume: the saved settings, but for the data path, --epochs and where and how it runs now.
    checkpoint, cfg = resume(cfg)
    epochs = _epochs(cfg)
    # Runtime: the checks that need no data come first, so that a wrong option fails in a second.
    runtime = _runtime(cfg, choice, observer)
    # Data: every file decoded once (into the cache, where it fits), bad ones named, before anything is written.
    data = prepare_data(cfg, checkpoint, dist, observer)
    # Model parts, and the state to go on from: a checkpoint's, or a fresh one.
    parts = TrainingParts.build(cfg, len(data.classes), runtime.device, runtime.precision, epochs, dist,
                                weights=checkpoint.state_dict if checkpoint is not None else None)
    state = _state(parts, checkpoint, cfg, epochs, runtime, dist, observer)
    # The run folder, now that every check has passed; rank 0 alone writes it.
    folder = RunFolder.open(cfg.output, writes=dist.is_main)
    config = _write_config(folder, cfg, epochs, data, dist)
    observer = _announce(folder, cfg, dist, observer)
    run = Run(cfg, epochs, runtime, data, parts, state, folder, config, dist, observer)
    partial = checkpoint.training.partial if checkpoint is not None else None
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
            if run.train_epoch(loaders, progress, iterations, interrupts):
                raise run.stop(progress, iterations, interrupts)
            lr = parts.lr()  # this epoch's, before the schedule steps
            run.finish_epoch(progress, lr, run.validate(loaders))
            if run.patience_ran_out():
                stopped_early = True
                break
    run.finish()
    return TrainResult(folder.path, state.epoch, state.best_epoch, state.best_acc, stopped_early,
                       tuple(state.history), tuple(folder.writer.waits))


def _epochs(cfg: TrainConfig) -> int:
    if cfg.data is None:
        raise ConfigError("give the training folder: alexnet train DATA")
    return cfg.epochs or DEFAULT_EPOCHS


def _runtime(cfg: TrainConfig, choice, observer: Observer) -> Runtime:
    """Device, precision and loaders, said in two lines; then the run's random streams are seeded."""
    if cfg.tensorboard:
        from alexnet_cli import tboard

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
    state = parts.restore(checkpoint.training, cfg, epochs, runtime.device, dist)
    observer.info(f"resuming {cfg.resume} at epoch {state.epoch + 1} of {epochs}")
    return state


def _write_config(folder: RunFolder, cfg: TrainConfig, epochs: int, data: TrainingData,
                  dist: distmod.Dist) -> dict[str, Any]:
    """config.json (and split.json for a split made now); returns the settings every checkpoint records."""
    config = {**cfg.to_dict(), "epochs": epochs, "output": folder.path.as_posix(), "resume": None,
              "world_size": dist.world_size}
    folder.write_json("config.json", {**config, "validation": data.val_source, "class_names": list(data.classes)})
    if data.split is not None:
        folder.write_json("split.json", data.split.record(cfg.seed))
    return config


def _announce(folder: RunFolder, cfg: TrainConfig, dist: distmod.Dist, observer: Observer) -> Observer:
    """Say where the run goes; with --tensorboard, the observer that also logs there."""
    observer.info(f"run folder: {folder.path}")
    if cfg.tensorboard and dist.is_main:
        from alexnet_cli import tboard

        observer = tboard.TensorBoardObserver(observer, folder.path / "tensorboard")
        observer.info(f"tensorboard: tensorboard --logdir {folder.path / 'tensorboard'}")
    if dist.enabled:
        observer.info(f"{dist.world_size} processes, batch {cfg.batch_size} each: "
                      f"{dist.world_size * cfg.batch_size} images per step")
    return observer


def _show_samples(run: Run) -> None:
    """With --tensorboard: a grid of training images as the model sees them."""
    if run.cfg.tensorboard and run.dist.is_main:
        train = run.data.train.samples
        run.observer.samples([p for p, _ in train], [lab for _, lab in train], run.data.classes,
                             run.data.preprocess)
