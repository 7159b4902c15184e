"""Before the first step: the settings of a resumed run, the training and validation sets (listed from their
index, and decoded into the cache when they fit), and the loaders that carry them. Everything here checks
before anything is written."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import WeightedRandomSampler

from alexnet_cli.artifacts.checkpoint import Checkpoint, load_checkpoint
from alexnet_cli.config.settings import DEFAULT_EPOCHS, RESUME_TAKES, TrainConfig
from alexnet_cli.data import folders as datamod
from alexnet_cli.data import loading, names
from alexnet_cli.data.augment import Augmentation, imbalance_warning, rgb_pca
from alexnet_cli.data.cache import ImageCache, make_cache
from alexnet_cli.data.images import open_image
from alexnet_cli.data.preprocess import Chain, Preprocess
from alexnet_cli.errors import CheckpointError, ConfigError, DataError
from alexnet_cli.observer import Observer
from alexnet_cli.runtime import distributed as distmod
from alexnet_cli.runtime import seeds
from alexnet_cli.runtime.context import Runtime


def resume(cfg: TrainConfig) -> tuple[Checkpoint | None, TrainConfig]:
    """The checkpoint to go on from, and the settings to go on with: the saved ones, but for the data path,
    --epochs and where and how it runs now."""
    if not cfg.resume:
        return None, cfg
    checkpoint = load_checkpoint(cfg.resume, mmap=False)
    if checkpoint.training is None:
        raise CheckpointError(f"{checkpoint.path} holds weights but no training state, so it cannot be resumed")
    saved: dict[str, Any] = {k: v for k, v in checkpoint.training.config.items()
                             if k in TrainConfig.__dataclass_fields__}
    for key in ("data", "val", "output", "class_names_file"):
        if saved.get(key) is not None:
            saved[key] = Path(saved[key])
    overrides: dict[str, Any] = {name: getattr(cfg, name) for name in RESUME_TAKES}  # the rest is the run's own
    overrides.update(epochs=cfg.epochs or saved.get("epochs"), output=cfg.output or Path(cfg.resume).parent)
    if cfg.data is None:
        del overrides["data"]
    saved.setdefault("frame", "crop")  # a run from before --frame cropped, whatever its images
    try:
        resumed = replace(TrainConfig(**saved), **overrides)
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint.path} has a damaged config: {exc}") from None
    done, epochs = checkpoint.training.epoch, resumed.epochs or DEFAULT_EPOCHS
    if done >= epochs:  # said before any data is listed or model built
        raise ConfigError(f"{cfg.resume} already finished {done} epochs: pass --epochs greater than {done} to "
                          "extend it")
    return checkpoint, resumed


@dataclass(frozen=True)
class Split:
    """Validation held out of the training folder (recorded in split.json, so a resume holds out the same)."""

    fraction: float
    val: datamod.ImageSet

    def record(self, seed: int) -> dict[str, Any]:
        return datamod.split_record(self.val, self.fraction, seed)


@dataclass(frozen=True)
class Folders:
    """The training folder and the validation folder (if there is one), listed and checked, nothing decoded."""

    train: datamod.ImageSet
    val: datamod.ImageSet | None
    val_dir: Path | None

    def median_side(self) -> int | None:
        """The training images' median short side, in pixels, from their headers (the upper median)."""
        sizes = self.train.sizes
        if sizes is None or len(self.train) == 0:
            return None
        sides = sizes.min(dim=1).values.sort().values
        return int(sides[len(sides) // 2])


@dataclass(frozen=True)
class TrainingData:
    train: datamod.ImageSet
    val: datamod.ImageSet | None
    val_source: str  # one line: where validation came from
    split: Split | None  # set when validation was split off the training folder just now
    preprocess: Preprocess
    cache: ImageCache | None  # None when off, or when the images did not fit
    augmentation: Augmentation = Augmentation()
    val_dir: Path | None = None  # the validation folder: --val, or the sibling val/ found
    display_names: tuple[str, ...] = ()  # each class's name from class_names.json, where there is one

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def list_folders(cfg: TrainConfig, checkpoint: Checkpoint | None, dist: distmod.Dist,
                 observer: Observer) -> Folders:
    """List the training (and validation) folders from their index, naming the files that cannot be used.
    Only new and changed files are opened (data/index.py); --strict decodes every one."""
    if cfg.data is None:
        raise ConfigError("give the training folder: alexnet train DATA")
    listed = partial(datamod.load_image_folder, strict=cfg.strict, check="decode" if cfg.strict else "index",
                     progress=observer.progress, dist=dist, report=observer.info)
    datamod.refuse_split_folders(cfg.data, datamod.find_classes(Path(cfg.data)))
    train = listed(cfg.data)
    if len(train.classes) < 2:
        raise DataError(f"{cfg.data} has only one class ({train.classes[0]}): a classifier needs at least two")
    datamod.refuse_empty_classes(train)
    datamod.say_loose_images(Path(cfg.data), observer.warn)
    if checkpoint is not None and tuple(train.classes) != checkpoint.class_names:
        raise DataError(
            f"the data's classes ({', '.join(train.classes)}) differ from the checkpoint's "
            f"({', '.join(checkpoint.class_names)})"
        )
    val_dir = cfg.val
    if val_dir is None and cfg.val_split is None:
        val_dir = datamod.find_sibling_validation(Path(cfg.data))
    val = None
    if val_dir is not None and Path(val_dir).resolve() == Path(cfg.data).resolve():
        raise ConfigError(f"--val {val_dir} is the training folder itself: validation would measure the images "
                          "it trains on (give a folder apart, or leave --val out to hold out a split)")
    if val_dir is not None:
        found = names.class_names(Path(val_dir), datamod.find_classes(Path(val_dir)))
        if set(found) != set(train.classes):
            raise DataError(
                f"validation classes differ from training classes: {val_dir} has {', '.join(found)}, "
                f"{cfg.data} has {', '.join(train.classes)}"
            )
        val = listed(val_dir, classes=train.classes)
        datamod.say_loose_images(Path(val_dir), observer.warn)
        unmeasured = datamod.empty_classes(val)
        if unmeasured:
            observer.warn(f"{val_dir} has no validation image for {', '.join(unmeasured)}: validation does not "
                          "measure that class")
        single = [name for name, n in zip(train.classes, train.counts()) if n == 1]
        if single:  # (a split names them itself: they keep their one image for training)
            observer.warn(f"one training image only in {', '.join(single)}: the model sees little of that class")
    for skipped in train.skipped + (val.skipped if val else ()):
        observer.warn(f"skipped {skipped}")
    return Folders(train, val, Path(val_dir) if val_dir is not None else None)


def prepare_data(cfg: TrainConfig, folders: Folders, checkpoint: Checkpoint | None, dist: distmod.Dist,
                 observer: Observer) -> TrainingData:
    """Decode the images into the cache where they fit (else nothing ahead), hold out validation, say what
    was found, and settle the augmentation."""
    preprocess = Preprocess.for_training(cfg)
    train, val = folders.train, folders.val
    cache = make_cache(cfg.cache, preprocess, dist.local_world_size)
    if cache is not None:
        kept, failures = cache.fill([train] + ([val] if val is not None else []), cfg.strict, observer.progress)
        for failure in failures:
            observer.warn(f"skipped {failure}")
        train, val = kept[0], (kept[1] if val is not None else None)
        observer.info(cache.describe())
        if not cache.accepting:
            cache = None
    saved_split = Path(cfg.output) / "split.json" if checkpoint is not None and cfg.output else None
    train, val, val_source, split = _validation(cfg, train, val, folders.val_dir, saved_split, observer)
    if val is None and cfg.patience is not None:
        observer.warn(f"--patience {cfg.patience} is off: without validation no epoch is better than another")
    observer.data_summary(train.classes, train.counts(), val.counts() if val else None, val_source)
    imbalance = imbalance_warning(dict(zip(train.classes, train.counts())))
    if imbalance and cfg.class_weights == "none" and not cfg.balanced_sampler:
        observer.warn(imbalance)
    augmentation = Augmentation.from_config(cfg, _colour_pca(cfg, checkpoint, train, preprocess, cache, observer))
    return TrainingData(train, val, val_source, split, preprocess, cache, augmentation,
                        folders.val_dir if val is not None and split is None and folders.val is not None else None,
                        _display_names(cfg, train.classes, observer))


def _display_names(cfg: TrainConfig, classes: tuple[str, ...], observer: Observer) -> tuple[str, ...]:
    """The classes' display names (--class-names, or class_names.json beside the data), said in one line."""
    assert cfg.data is not None
    found = names.display_names(Path(cfg.data), classes, cfg.class_names_file)
    for reason in found.passed_over:
        observer.warn(f"class names: passed over {reason}")
    if found.source is None:
        return ()
    named = len(classes) - len(found.missing)
    observer.info(f"class names: from {found.source}, e.g. {classes[0]} -> {found.names[0]}")
    if found.missing:
        observer.warn(f"{found.source} names {named:,} of {len(classes):,} classes: the others show their folder's "
                      f"name ({', '.join(found.missing[:5])}{' ...' if len(found.missing) > 5 else ''})")
    return found.names


def _validation(cfg: TrainConfig, train: datamod.ImageSet, val: datamod.ImageSet | None, val_dir: Path | None,
                saved_split: Path | None, observer: Observer):
    """(training set, validation set or None, where validation came from, Split or None)."""
    if val is not None:
        return train, val, f"folder {val_dir}", None
    if saved_split is not None and saved_split.is_file():
        train_part, val = datamod.split_from_file(train, saved_split)
        return train_part, val, f"the saved split {saved_split}", None
    fraction = 0.1 if cfg.val_split is None else cfg.val_split
    if fraction == 0:
        observer.warn("no validation set (--val-split 0): best.pt is the last epoch")
        return train, None, "none", None
    train_part, val = datamod.stratified_split(train, fraction, cfg.seed)
    if len(val) == 0:
        observer.warn(f"the {fraction:.0%} split of {cfg.data} holds out no image (no class has two): training "
                      "without validation, so best.pt is the last epoch (give --val DIR to measure)")
        return train, None, "none (no class has two images to hold one out)", None
    unmeasured = [name for name, n in zip(val.classes, val.counts()) if n == 0]
    if unmeasured:
        observer.warn(f"no held-out image for {', '.join(unmeasured)} (one image each, kept for training): "
                      "validation does not measure that class")
    return train_part, val, f"a {fraction:.0%} stratified split of {cfg.data} (seed {cfg.seed})", Split(fraction, val)


PCA_IMAGES = 5_000  # --pca-lighting measures the colours of at most this many training images, evenly spread


def _colour_pca(cfg: TrainConfig, checkpoint: Checkpoint | None, train: datamod.ImageSet, preprocess: Preprocess,
                cache: ImageCache | None, observer: Observer):
    """--pca-lighting's eigenvalues and eigenvectors: those a resumed run stored, else measured on the
    training images (from the cache, else decoded again) at the resize the model sees."""
    if cfg.pca_lighting <= 0:
        return None
    saved = checkpoint.training.config if checkpoint is not None and checkpoint.training is not None else {}
    if saved.get("pca_eigval"):
        return saved["pca_eigval"], saved["pca_eigvec"]
    every = train.paths
    paths = [every[i] for i in range(0, len(every), max(1, len(every) // PCA_IMAGES))][:PCA_IMAGES]
    decode = preprocess.decode_transforms()

    def pixels(path: str):
        cached = cache.get(path) if cache is not None else None
        return cached if cached is not None else decode(open_image(path))

    eigval, eigvec = rgb_pca(pixels(path) for path in paths)
    observer.info(f"PCA lighting: RGB eigenvalues {', '.join(f'{v:.2e}' for v in eigval)} from {len(paths):,} "
                  "training images")
    return eigval, eigvec


@dataclass
class Loaders:
    """The run's loaders, each iterated once per epoch; as a context manager, their processes end with it."""

    train: loading.Loader | loading.ThreadLoader
    val: loading.Loader | loading.ThreadLoader | None
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
    settings = loading.LoaderSettings.for_runtime(runtime, cfg.batch_size, observer.warn)
    val = None
    if data.val is not None:
        preprocess = data.preprocess
        dataset = loading.ImageDataset(data.val.paths, data.val.labels, preprocess.eval_transforms(),
                                       draft_size=preprocess.resize_size, cache=data.cache,
                                       from_cache=preprocess.eval_crop())
        val = loading.make_loader(dataset, settings, distmod.eval_shard(len(data.val), dist) if dist.enabled else None)
    sampler = loading.EpochSampler()
    return Loaders(loading.make_loader(training_dataset(data), settings, sampler), val, sampler)


def training_dataset(data: TrainingData, augment_seed: int | None = None) -> loading.ImageDataset:
    """The training images as the steps see them: decoded (or taken from the cache), then the augmentation's
    crop. The run's loader and the LR range test both read it. JPEGs much larger than the input decode at a
    reduced scale that still covers the resize (draft_size)."""
    crop = data.augmentation.train_crop(data.preprocess)
    return loading.ImageDataset(data.train.paths, data.train.labels, Chain(data.preprocess.decode_transforms(), crop),
                                augment_seed, data.preprocess.resize_size, data.cache, crop)


def epoch_order(cfg: TrainConfig, labels, epoch: int, dist: distmod.Dist) -> list[int]:
    """This rank's training order for one epoch: a shuffle, or with --balanced-sampler as many draws (with
    replacement) as there are images, each class equally likely. Both depend on (seed, epoch) alone, so a
    resumed run draws the same; under torchrun each rank takes every world_size-th draw."""
    if not cfg.balanced_sampler:
        return distmod.train_shard(len(labels), cfg.seed, epoch, dist)
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels)
    weights = (1.0 / counts.double())[labels]
    generator = torch.Generator().manual_seed(seeds.epoch_augment_seed(cfg.seed, epoch))
    draws = list(WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator))
    per_rank = -(-len(draws) // dist.world_size)
    draws += draws[:per_rank * dist.world_size - len(draws)]  # equal shares, as DistributedSampler pads
    return draws[dist.rank::dist.world_size]
