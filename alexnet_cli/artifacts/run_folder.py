"""The run folder: where a training run keeps its config, split, metrics and checkpoints. Under torchrun rank 0
alone writes it: a RunFolder of any other rank does nothing."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet_cli.artifacts.background import CheckpointWriter, copy_containers
from alexnet_cli.artifacts.checkpoint import Checkpoint, save_checkpoint
from alexnet_cli.errors import AlexNetError, CheckpointError, ConfigError, OutputError
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.files import atomic_write_text, publish_copy

RUNS_ROOT = Path("runs")
METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_images", "lr", "epoch_seconds", "images_per_second"
)


def new_run_dir(root: Path = RUNS_ROOT, prefix: str = "train") -> Path:
    """runs/train-1, runs/train-2, ...: the first number not taken, created here so two runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(rf"{prefix}-(\d+)", p.name))]
    number = max(taken, default=0) + 1
    while True:
        candidate = root / f"{prefix}-{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def newest_checkpoint(root: Path = RUNS_ROOT, name: str = "best.pt", alternative: str = "") -> Path:
    candidates = sorted(root.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not candidates:
        raise CheckpointError(
            f"no trained model found (no {root}/*/{name}): train one first with `alexnet train DATA`, "
            f"or pass --weights CKPT{alternative}"
        )
    return candidates[-1]


def write_metrics(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the whole history, so a resumed run never holds a row twice."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def resolve_weights(weights: Path | None, observer: Observer, alternative: str = "") -> Path:
    """--weights, or the newest run's best.pt (said in one line)."""
    if weights is not None:
        return weights
    path = newest_checkpoint(alternative=alternative)
    observer.info(f"using the newest run's checkpoint: {path}")
    return path


RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.csv")


def refuse_a_run_there(output: Path | None) -> None:
    """ConfigError when --output names a folder that already holds a run: a new run would write over its
    checkpoints. Said before any data work; nothing is changed."""
    if output is None or not Path(output).is_dir():
        return
    found = [name for name in RUN_FILES if (Path(output) / name).exists()]
    if found:
        raise ConfigError(f"--output {output} already holds a run ({', '.join(found)}): resume it with --resume "
                          f"{Path(output) / 'last.pt'}, or give another --output; nothing was changed")


@dataclass(frozen=True)
class HeldOut:
    """What a run validated on, read back from its folder: `alexnet evaluate --run RUN`."""

    data: Path  # the folder the images are under
    names: tuple[str, ...] | None  # the held-out images' paths under `data` (split.json), or None: all of it
    source: str  # one line: where it came from

    def split(self, relative: Sequence[str]) -> tuple[list[int], list[int]]:
        """Of images named by their paths under `data` (ImageSet.relative()): the positions held out, and the
        positions of the rest (what the run trained on)."""
        wanted = set(self.names or ())
        held = [i for i, name in enumerate(relative) if name in wanted]
        rest = [i for i, name in enumerate(relative) if name not in wanted]
        return held, rest


def held_out(run: Path) -> HeldOut:
    """The validation a run used: the images split.json held out of its training folder, or its --val
    folder. CheckpointError when the folder is not a run, or validated on nothing."""
    try:
        config = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{run} is not a run folder of alexnet train (no readable config.json: "
                              f"{getattr(exc, 'strerror', None) or exc})") from None
    split_file = Path(run) / "split.json"
    if split_file.is_file():
        try:
            names = tuple(str(name) for name in json.loads(split_file.read_text(encoding="utf-8"))["val"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read the saved split {split_file}: {exc}") from None
        return HeldOut(Path(config["data"]), names, f"the {len(names):,} images {split_file} held out of "
                                                    f"{config['data']}")
    folder = config.get("validation_folder") or config.get("val")
    if folder:
        return HeldOut(Path(folder), None, f"the run's validation folder {folder}")
    raise CheckpointError(f"{run} trained without validation, so nothing was held out: give a labelled folder, "
                          "alexnet evaluate DATA --weights " + str(Path(run) / "best.pt"))


class RunFolder:
    """runs/train-N (or --output) and what goes in it. Every write is rank 0's: on other ranks it does nothing."""

    def __init__(self, path: Path, writes: bool) -> None:
        self.path = path
        self.writes = writes
        self.writer = CheckpointWriter()  # each epoch's checkpoint goes to disk while the next one trains

    @classmethod
    def open(cls, output: Path | None, writes: bool) -> RunFolder:
        """The folder, made now: only after the data and options have passed every check, so that a failed
        start leaves no empty runs/train-N behind."""
        if not writes:
            return cls(Path(output or RUNS_ROOT), False)
        path = Path(output) if output else new_run_dir()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, True)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def write_json(self, name: str, data: Any) -> None:
        if self.writes:
            write_json(self.path / name, data)

    def save_last(self, checkpoint: Checkpoint, observer: Observer) -> None:
        """last.pt now, after the write in flight (on a signal: the run is about to exit)."""
        if self.writes:
            self.writer.wait(observer.warn)
            checkpoint.save(self.last)

    def save_epoch(self, checkpoint: Checkpoint, history: Sequence[dict[str, Any]], improved: bool,
                   confusion: dict[str, Any] | None, observer: Observer) -> None:
        """After an epoch, in the background (writer.py): last.pt; best.pt and the best epoch's confusion
        matrix when it improved; metrics.csv. Each file is on disk before the next is begun."""
        if not self.writes:
            return
        if checkpoint.training is None:
            raise ValueError("an epoch's checkpoint carries its training state")
        payload, rows = copy_containers(checkpoint.to_payload()), copy_containers(list(history))
        epoch = checkpoint.training.epoch

        def job(serialised, warn) -> None:
            save_checkpoint(self.last, payload, serialised)
            if improved:
                try:
                    publish_copy(self.last, self.best)
                except OutputError as exc:  # a locked best.pt must not end a run that can go on
                    warn(f"{exc}; best.pt was not updated, last.pt holds epoch {epoch}")
                if confusion is not None:
                    write_json(self.path / "confusion.json", confusion)
            write_metrics(self.path / "metrics.csv", rows)

        self.writer.submit(job, observer.warn)

    def guard(self, optimizer) -> None:
        """The optimizer's steps wait until a checkpoint in flight has read the tensors they change."""
        if self.writes:
            self.writer.guard(optimizer)

    @contextmanager
    def writing(self, observer: Observer):
        """Leaving it, wait for the write in flight. After an error, the write's own failure (if it failed
        too) is not said over the first one."""
        try:
            yield self
        except BaseException:
            with suppress(AlexNetError):
                self.writer.wait(observer.warn)
            raise
        self.writer.wait(observer.warn)
