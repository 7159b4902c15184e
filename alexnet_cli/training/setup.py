"""Before the first step: the settings of a resumed run, the training and validation sets (scanned, and
cached when they fit), and the loaders that carry them. Everything here checks before anything is written."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alexnet_cli import data as datamod
from alexnet_cli import distributed as distmod
from alexnet_cli import loading, seeds
from alexnet_cli.augment import Augmentation, imbalance_warning, rgb_pca
from alexnet_cli.cache import ImageCache, make_cache
from alexnet_cli.checkpoint import Checkpoint, load_checkpoint
from alexnet_cli.config import TrainConfig
from alexnet_cli.errors import CheckpointError, DataError
from alexnet_cli.observer import Observer
from alexnet_cli.preprocess import Chain, Preprocess
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
    saved.setdefault("frame", "crop")  # a run from before --frame cropped, whatever its images
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
    augmentation: Augmentation = Augmentation()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def prepare_data(cfg: TrainConfig, checkpoint: Checkpoint | None, dist: distmod.Dist,
                 observer: Observer) -> TrainingData:
    """Scan the training (and validation) folders, every file decoded once, and say what was found."""
    preprocess = cfg.preprocess()
    cache = make_cache(cfg.cache, preprocess, dist.local_world_size)
    saved_split = Path(cfg.output) / "split.json" if checkpoint is not None else None
    train, val, val_source, split = _split(cfg, observer, saved_split, cache)
    for skipped in train.skipped + (val.skipped if val else ()):
        observer.warn(f"skipped {skipped}")
    observer.data_summary(train.classes, train.counts(), val.counts() if val else None, val_source)
    imbalance = imbalance_warning(dict(zip(train.classes, train.counts())))
    if imbalance and cfg.class_weights == "none" and not cfg.balanced_sampler:
        observer.warn(imbalance)
    if checkpoint is not None and tuple(train.classes) != checkpoint.class_names:
        raise DataError(
            f"the data's classes ({', '.join(train.classes)}) differ from the checkpoint's "
            f"({', '.join(checkpoint.class_names)})"
        )
    if cache is not None:
        observer.info(cache.describe())
        if not cache.accepting:
            cache = None
    augmentation = cfg.augmentation(_colour_pca(cfg, checkpoint, train, preprocess, cache, observer))
    return TrainingData(train, val, val_source, split, preprocess, cache, augmentation)


PCA_IMAGES = 5_000  # --pca-lighting measures the colours of at most this many training images, evenly spread


def _colour_pca(cfg: TrainConfig, checkpoint: Checkpoint | None, train: datamod.ImageSet, preprocess: Preprocess,
                cache: ImageCache | None, observer: Observer):
    """--pca-lighting's eigenvalues and eigenvectors: those a resumed run stored, else measured on the
    training images (from the cache, else decoded again) at the resize the model sees."""
    if cfg.pca_lighting <= 0:
        return None
    saved = checkpoint.training.config if checkpoint is not None else {}
    if saved.get("pca_eigval"):
        return saved["pca_eigval"], saved["pca_eigvec"]
    paths = [path for path, _ in train.samples]
    paths = paths[::max(1, len(paths) // PCA_IMAGES)][:PCA_IMAGES]
    decode = preprocess.decode_transforms()

    def pixels(path: str):
        cached = cache.get(path) if cache is not None else None
        return cached if cached is not None else decode(datamod.open_image(path))

    eigval, eigvec = rgb_pca(pixels(path) for path in paths)
    observer.info(f"PCA lighting: RGB eigenvalues {', '.join(f'{v:.2e}' for v in eigval)} from {len(paths):,} "
                  "training images")
    return eigval, eigvec


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
    augmentation = data.augmentation
    observer.info(f"augmentation: {augmentation.describe()}")
    if augmentation.on_cpu_floats:  # PCA lighting acts per sample on float pixels
        observer.info("pixels: float samples finished on the CPU (PCA lighting works per sample)")
    else:
        erased = ", erased" if augmentation.random_erasing > 0 else ""
        observer.info(f"pixels: uint8 crops to {runtime.device.type}, flipped, scaled, normalised{erased} there "
                      "per batch")
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
    crop = augmentation.train_crop(data.preprocess)
    train = loading.make_loader(
        [p for p, _ in data.train.samples], [lab for _, lab in data.train.samples],
        Chain(data.preprocess.decode_transforms(), crop), from_cache=crop, order=sampler, **common)
    return Loaders(train, val, sampler)


def epoch_order(cfg: TrainConfig, labels: list[int], epoch: int, dist: distmod.Dist) -> list[int]:
    """This rank's training order for one epoch: a shuffle, or with --balanced-sampler as many draws (with
    replacement) as there are images, each class equally likely. Both depend on (seed, epoch) alone, so a
    resumed run draws the same; under torchrun each rank takes every world_size-th draw."""
    if not cfg.balanced_sampler:
        return distmod.train_shard(len(labels), cfg.seed, epoch, dist)
    import torch
    from torch.utils.data import WeightedRandomSampler

    counts = torch.bincount(torch.tensor(labels))
    weights = (1.0 / counts.double())[torch.tensor(labels)]
    generator = torch.Generator().manual_seed(seeds.epoch_augment_seed(cfg.seed, epoch))
    draws = list(WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator))
    per_rank = -(-len(draws) // dist.world_size)
    draws += draws[:per_rank * dist.world_size - len(draws)]  # equal shares, as DistributedSampler pads
    return draws[dist.rank::dist.world_size]
