"""Before the first step: the settings of a resumed run, the training and validation sets (scanned, and
cached when they fit), and the loaders that carry them. Everything here checks before anything is written."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alexnet_cli import data as datamod
from alexnet_cli import distributed as distmod
from alexnet_cli import loading
from alexnet_cli.cache import ImageCache, make_cache
from alexnet_cli.checkpoint import Checkpoint, load_checkpoint
from alexnet_cli.config import TrainConfig
from alexnet_cli.errors import CheckpointError, DataError
from alexnet_cli.models import arch_info
from alexnet_cli.observer import Observer
from alexnet_cli.preprocess import Preprocess
from alexnet_cli.runtime import Runtime


def resume(cfg: TrainConfig) -> tuple[Checkpoint | None, TrainConfig]:
    """The checkpoint to go on from, and the settings to go on with: the saved ones, but for the data path,
    --epochs and where and how it runs now."""
    if not cfg.resume:
        return None, cfg
    checkpoint = load_checkpoint(cfg.resume, mmap=False)
    if checkpoint.training is None:
        raise CheckpointError(f"{checkpoint.path} holds weights but no training state, so it cannot be resumed")
    saved = {k: v for k, v in checkpoint.training.config.items() if k in TrainConfig.__dataclass_fields__}
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
        return checkpoint, replace(TrainConfig(**saved), **overrides)
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint.path} has a damaged config: {exc}") from None


@dataclass(frozen=True)
class Split:
    """Validation held out of the training folder (recorded in split.json, so a resume holds out the same)."""

    fraction: float
    val: datamod.ImageSet

    def record(self, seed: int) -> dict[str, Any]:
        return datamod.split_record(self.val, self.fraction, seed)


@dataclass(frozen=True)
class TrainingData:
    train: datamod.ImageSet
    val: datamod.ImageSet | None
    val_source: str  # one line: where validation came from
    split: Split | None  # set when validation was split off the training folder just now
    preprocess: Preprocess
    cache: ImageCache | None  # None when off, or when the images did not fit

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def prepare_data(cfg: TrainConfig, checkpoint: Checkpoint | None, dist: distmod.Dist,
                 observer: Observer) -> TrainingData:
    """Scan the training (and validation) folders, every file decoded once, and say what was found."""
    preprocess = Preprocess.for_arch(cfg.effective_image_size, arch_info(cfg.arch).default_image_size)
    cache = make_cache(cfg.cache, preprocess, dist.local_world_size)
    saved_split = Path(cfg.output) / "split.json" if checkpoint is not None else None
    train, val, val_source, split = _split(cfg, observer, saved_split, cache)
    for skipped in train.skipped + (val.skipped if val else ()):
        observer.warn(f"skipped {skipped}")
    observer.data_summary(train.classes, train.counts(), val.counts() if val else None, val_source)
    if checkpoint is not None and tuple(train.classes) != checkpoint.class_names:
        raise DataError(
            f"the data's classes ({', '.join(train.classes)}) differ from the checkpoint's "
            f"({', '.join(checkpoint.class_names)})"
        )
    if cache is not None:
        observer.info(cache.describe())
        if not cache.accepting:
            cache = None
    return TrainingData(train, val, val_source, split, preprocess, cache)


def _split(cfg: TrainConfig, observer: Observer, saved_split: Path | None, cache):
    """(training set, validation set or None, where validation came from, Split or None). The scan fills
    `cache`, when there is one."""
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
    return train_part, val, f"a {fraction:.0%} stratified split of {cfg.data} (seed {cfg.seed})", Split(fraction, val)


@dataclass
class Loaders:
    """The run's loaders, each iterated once per epoch; as a context manager, their processes end with it."""

    train: loading.Loader
    val: loading.Loader | None
    sampler: loading.EpochSampler  # the training order, set per epoch

    def __enter__(self) -> Loaders:
        return self

    def __exit__(self, *exc_info) -> None:
        with contextlib.ExitStack() as stack:  # close both, even if one fails
            stack.callback(self.train.close)
            if self.val is not None:
                stack.callback(self.val.close)


def make_loaders(cfg: TrainConfig, data: TrainingData, runtime: Runtime, dist: distmod.Dist,
                 observer: Observer) -> Loaders:
    # Every augmentation there is (crop, flip) has a uint8 form whose flip the device makes per batch.
    observer.info(f"pixels: uint8 crops to {runtime.device.type}, flipped, scaled and normalised there per batch")
    # JPEGs much larger than the input decode at a reduced scale that still covers the resize.
    common = dict(batch_size=cfg.batch_size, workers=runtime.workers, pin_memory=runtime.pin_memory,
                  draft_size=data.preprocess.resize_size, cache=data.cache, warn=observer.warn)
    val = None
    if data.val is not None:
        val = loading.make_loader(
            [p for p, _ in data.val.samples], [lab for _, lab in data.val.samples],
            data.preprocess.eval_transforms(), from_cache=data.preprocess.eval_crop(),
            order=distmod.eval_shard(len(data.val.samples), dist) if dist.enabled else None, **common)
    sampler = loading.EpochSampler()
    train = loading.make_loader(
        [p for p, _ in data.train.samples], [lab for _, lab in data.train.samples],
        data.preprocess.train_transforms(), from_cache=data.preprocess.train_crop(), order=sampler, **common)
    return Loaders(train, val, sampler)
