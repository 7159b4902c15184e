"""One training run once it is set up: what each epoch does, in the order fit() calls it."""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alexnet_cli.artifacts.run_folder import RunFolder
from alexnet_cli.config.settings import TrainConfig
from alexnet_cli.data.loading import report_unreadable
from alexnet_cli.errors import MissingExtra
from alexnet_cli.inference.evaluate import EvalResult, EvalSettings, evaluate_model
from alexnet_cli.observer import Observer
from alexnet_cli.reporting import plots
from alexnet_cli.reporting.tensorboard import TensorBoardObserver
from alexnet_cli.runtime import distributed as distmod
from alexnet_cli.runtime import seeds
from alexnet_cli.runtime.context import Runtime
from alexnet_cli.training.loop import EpochReport, TrainingInterrupted, train_one_epoch
from alexnet_cli.training.setup import Loaders, TrainingData, epoch_order
from alexnet_cli.training.state import EpochProgress, RunState, TrainingParts, start_epoch_progress


@dataclass
class Run:
    cfg: TrainConfig
    epochs: int
    runtime: Runtime
    data: TrainingData
    parts: TrainingParts
    state: RunState
    folder: RunFolder
    config: dict[str, Any]  # the settings every checkpoint records
    dist: distmod.Dist
    observer: Observer

    def start_epoch(self, loaders: Loaders, partial: Mapping[str, Any] | None) -> tuple[EpochProgress, int]:
        """The next epoch's progress (where an interrupted run stopped inside it, if it did) and its number of
        steps; the loader is set to this rank's share of the epoch's shuffle, from that step on."""
        epoch = self.state.epoch + 1
        progress = start_epoch_progress(epoch, partial, self.dist, self.observer)
        shard = epoch_order(self.cfg, self.data.train.labels, epoch, self.dist)
        loaders.sampler.set_epoch(shard[progress.iteration * self.cfg.batch_size:],
                                  augment_seed=seeds.epoch_augment_seed(self.cfg.seed, epoch))
        return progress, math.ceil(len(shard) / self.cfg.batch_size)

    def on_failed(self, failed) -> int:
        return report_unreadable(failed, self.cfg.strict, self.observer)

    def train_epoch(self, loaders: Loaders, progress: EpochProgress, iterations: int,
                    interrupts: list[int]) -> bool:
        """Train the epoch (or its rest); True when a signal stopped it between two steps. Every rank stops at
        the same step when any of them is signalled (one all-reduce per step)."""
        device = self.runtime.device
        report = EpochReport(self.observer, self.epochs, iterations, self.cfg.log_interval, self.on_failed)
        stopped = train_one_epoch(self.parts, loaders.train, self.runtime, progress, report,
                                  lambda: distmod.any_rank(bool(interrupts), device, self.dist), self.dist.enabled)
        progress.sum_over_ranks(device, self.dist)
        return stopped

    def checkpoint(self, partial: dict[str, Any] | None = None):
        return self.parts.checkpoint(self.cfg, (self.data.classes, self.data.display_names), self.data.preprocess,
                                     self.state, self.config, self.runtime.device, partial)

    def stop(self, progress: EpochProgress, iterations: int, interrupts: list[int]) -> TrainingInterrupted:
        """Save where a signal stopped the run, so that --resume continues from the next step; the error that
        says so, with the exit code of the signal."""
        self.folder.save_last(self.checkpoint(partial={**progress.to_dict(), "world_size": self.dist.world_size}),
                              self.observer)
        signum = interrupts[0] if interrupts else signal.SIGTERM
        return TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {progress.epoch}, iteration "
            f"{progress.iteration}/{iterations}; saved {self.folder.last}. Resume with: alexnet train --resume "
            f"{self.folder.last}",
            exit_code=128 + signum,
        )

    def validate(self, loaders: Loaders) -> EvalResult | None:
        if loaders.val is None:
            return None
        settings = EvalSettings(criterion=self.parts.criterion, on_failed=self.on_failed, dist=self.dist)
        return evaluate_model(self.parts.eval_model, loaders.val, self.runtime, len(self.data.classes), settings)

    def finish_epoch(self, progress: EpochProgress, lr: float, result: EvalResult | None) -> None:
        """Record the epoch, save last.pt (and best.pt), report."""
        row, improved = self.state.record(progress.epoch, progress, result, lr)
        confusion = None if result is None else {  # the best epoch's, for the plots
            "epoch": progress.epoch, "class_names": list(self.data.display_names or self.data.classes),
            "confusion_matrix": result.confusion}
        self.folder.save_epoch(self.checkpoint(), self.state.history, improved, confusion, self.observer)
        self.observer.epoch_end(row, self.epochs, improved)

    def patience_ran_out(self) -> bool:
        patience = self.cfg.patience
        if patience is None or self.state.epochs_since_best < patience:
            return False
        self.observer.info(f"early stop: no better validation accuracy for {patience} epochs "
                           f"(best at epoch {self.state.best_epoch})")
        return True

    def finish(self) -> None:
        if self.folder.writes:
            self._draw_plots()
        if isinstance(self.observer, TensorBoardObserver):
            self.observer.close()

    def _draw_plots(self) -> None:
        """curves.png and confusion_matrix.png, or one line on how to get them."""
        try:
            written = plots.plot_run(self.folder.path)
        except MissingExtra as exc:
            self.observer.info(str(exc))
            return
        self.observer.info("plots: " + ", ".join(str(p) for p in written))
