"""Data: safe image opening, class discovery, validation splits, transforms and loaders.

Everything here works on plain paths and (path, label) lists, so that train, evaluate and predict share it.
"""

from __future__ import annotations

import json
import os
import random
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet_cli.errors import DataError

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Matched case-insensitively, so IMG_0001.JPG counts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# ImageNet statistics, as torchvision's weights use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = tuple[str, int]  # (path, class index)


class UnreadableImage(DataError):
    """A file that cannot be used as an image; the message names the file and why."""


def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(image):
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float greys scaled, CMYK converted."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto a fixed white background rather than dropping the alpha, which would
        # turn transparent pixels into whatever colour they happen to store.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit (or 32-bit integer) greyscale: scale 0-65535 to 0-255 instead of clipping at 255.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if image.mode == "F":
        return image.point(lambda v: v * 255 if 0 <= v <= 1 else v).convert("L").convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open one image as RGB with its EXIF orientation applied, or raise UnreadableImage naming it.

    Every failure a file can cause (empty, truncated, not an image, a decompression bomb) becomes
    UnreadableImage, so callers can skip the file and carry on. `draft_size` lets a large JPEG decode at a
    reduced scale (DCT scaling) that is still at least that many pixels on each side.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that. We refuse at the limit itself,
            # inside this scope only, rather than changing the limit for the whole process.
            warnings.simplefilter("ignore")  # Pillow's notes on damaged metadata: the file is judged below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()  # decode now: a truncated file fails here, not later in a transform
                return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombWarning as exc:
        raise UnreadableImage(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, EOFError,
            ZeroDivisionError, Image.DecompressionBombError) as exc:
        # Pillow's decoders report damaged files through many exception types; none of them is our bug.
        reason = str(exc) or exc.__class__.__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not an image (no image format recognised)"
        if os.path.exists(path) and os.path.getsize(path) == 0:
            reason = "empty file"
        raise UnreadableImage(f"{path}: {reason}") from None


@dataclass(frozen=True)
class Preprocess:
    """The one definition of preprocessing, stored in every checkpoint and rebuilt by evaluate and predict.

    Training: resize the short side to `resize_size` (about 256/227 of the input, as in the paper), random
    crop to `image_size`, random horizontal flip. Evaluation: the same resize, then a centre crop.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def for_arch(cls, image_size: int, native_size: int) -> Preprocess:
        # 256 is to 227 (or torchvision's 224) as resize_size is to image_size.
        return cls(image_size=image_size, resize_size=round(image_size * 256 / native_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        try:
            return cls(
                image_size=int(data["image_size"]),
                resize_size=int(data["resize_size"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the stored preprocessing is malformed: {exc}") from None

    def _tail(self) -> list:
        import torch
        from torchvision.transforms import v2

        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def _resize(self):
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        return v2.Resize(self.resize_size, interpolation=mode, antialias=True)

    def train_transforms(self) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose(
            [self._resize(), v2.RandomCrop(self.image_size), v2.RandomHorizontalFlip(), *self._tail()]
        )

    def eval_transforms(self) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose([self._resize(), v2.CenterCrop(self.image_size), *self._tail()])


@dataclass(frozen=True)
class ImageSet:
    """A labelled list of images with the class names their labels index."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = field(default=())  # one "path: reason" per unusable file

    def counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


# Scanning decodes every file once, at a reduced JPEG scale: a truncated file still fails (the whole stream
# is read), but a 12-megapixel photo decodes about 8 times faster than at full size.
SCAN_DRAFT_SIZE = 64


def scan_image(path: str) -> str | None:
    """Check one file before training: None if it opens as an image, else why not (naming the file)."""
    try:
        open_image(path, draft_size=SCAN_DRAFT_SIZE)
    except UnreadableImage as exc:
        return str(exc)
    return None


def find_classes(root: Path) -> list[str]:
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (give a folder with one subfolder per class)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders: lay images out as {root}/<class>/<image>.jpg")
    return classes


def load_image_folder(root: str | Path, classes: Sequence[str] | None = None, strict: bool = False,
                      scan: bool = True) -> ImageSet:
    """Read an ImageFolder tree (root/<class>/**/<image>). With `classes`, labels follow that order and every
    folder must be one of them (evaluation against a checkpoint's classes).

    With `scan`, every image is decoded once, up front: a bad file is found in seconds, not mid-epoch (a
    single pass, such as evaluation, skips the scan and lets the loader skip bad files as it meets them).
    Files that are not used are listed in `skipped` with the reason; with `strict`, the first one is an
    error instead.
    """
    root = Path(root)
    found = find_classes(root)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{root} has classes the model does not know: {', '.join(unknown)} "
                f"(it knows {', '.join(classes)})"
            )
    index = {name: i for i, name in enumerate(classes)}
    samples: list[Sample] = []
    skipped: list[str] = []
    for name in found:
        for directory, subdirs, files in os.walk(root / name, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for filename in sorted(files):
                path = os.path.join(directory, filename)
                if filename.startswith("."):
                    reason = f"{path}: hidden file"
                elif not is_image_file(filename):
                    reason = f"{path}: not an image extension ({', '.join(IMAGE_EXTENSIONS)})"
                else:
                    reason = scan_image(path) if scan else None
                if reason is None:
                    samples.append((path, index[name]))
                elif strict:
                    raise DataError(f"--strict: {reason}")
                else:
                    skipped.append(reason)
    if not samples:
        raise DataError(f"no readable images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return ImageSet(root, tuple(classes), tuple(samples), tuple(skipped))


def find_sibling_validation(train_root: Path) -> Path | None:
    """`data/train` pairs with `data/val` (or `data/test`); other folder names pair with nothing."""
    if train_root.name.lower() not in ("train", "training"):
        return None
    for name in ("val", "valid", "validation", "test"):
        candidate = train_root.parent / name
        if candidate.is_dir():
            return candidate
    return None


def stratified_split(images: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out `fraction` of each class (at least one image of any class that has two or more)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in images.samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return (
        ImageSet(images.root, images.classes, tuple(sorted(train)), images.skipped),
        ImageSet(images.root, images.classes, tuple(sorted(val))),
    )


def split_from_file(images: ImageSet, split_file: Path) -> tuple[ImageSet, ImageSet]:
    """Re-create a saved split: the images listed as validation there are validation again."""
    try:
        held_out = set(json.loads(split_file.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the saved split {split_file}: {exc}") from None
    rel = lambda path: os.path.relpath(path, images.root)  # noqa: E731
    train = tuple(s for s in images.samples if rel(s[0]) not in held_out)
    val = tuple(s for s in images.samples if rel(s[0]) in held_out)
    return (
        ImageSet(images.root, images.classes, train, images.skipped),
        ImageSet(images.root, images.classes, val),
    )


def split_record(val: ImageSet, fraction: float, seed: int) -> dict[str, Any]:
    return {
        "fraction": fraction,
        "seed": seed,
        "val": [os.path.relpath(path, val.root) for path, _ in val.samples],
    }


def _dataset_class():
    import torch
    from torch.utils.data import Dataset

    class ImageDataset(Dataset):
        """(image, label) pairs that never stop a run: a file that fails to open yields its error instead.

        With `augment_seed`, each sample's random augmentation is seeded by (augment_seed, index) alone, so it
        is the same whichever worker loads it, and the same after a resume in the middle of an epoch.
        """

        def __init__(self, paths: Sequence[str], labels: Sequence[int] | None, transform: Callable,
                     augment_seed: int | None = None, draft_size: int | None = None) -> None:
            self.paths = list(paths)
            self.labels = list(labels) if labels is not None else None
            self.transform = transform
            self.augment_seed = augment_seed
            self.draft_size = draft_size

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, key):
            # An EpochSampler hands (index, augment_seed) pairs; a plain sampler hands indices.
            index, augment_seed = key if isinstance(key, tuple) else (key, self.augment_seed)
            label = self.labels[index] if self.labels is not None else -1
            try:
                image = open_image(self.paths[index], self.draft_size)
            except UnreadableImage as exc:
                return None, label, index, str(exc)
            if augment_seed is None:
                return self.transform(image), label, index, None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(augment_seed * 1_000_003 + index)
                return self.transform(image), label, index, None

    return ImageDataset


def collate_readable(batch):
    """Stack the images that opened; pass on the indices and errors of those that did not.

    Returns (images or None, labels, indices, failed) where failed is a list of (index, message).
    """
    import torch

    good = [item for item in batch if item[0] is not None]
    failed = [(index, error) for image, _, index, error in batch if image is None]
    if not good:
        return None, None, [], failed
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, [item[2] for item in good], failed


class EpochSampler:
    """The order of one epoch and its augmentation seed, replaced between epochs.

    One DataLoader over it serves the whole run, so its worker processes persist from epoch to epoch
    (persistent_workers) instead of starting again each time. It yields (index, augment_seed) pairs: the seed
    travels with each index to whichever worker loads it.
    """

    def __init__(self) -> None:
        self.order: list[int] = []
        self.augment_seed: int | None = None

    def set_epoch(self, order: Sequence[int], augment_seed: int | None) -> None:
        self.order, self.augment_seed = list(order), augment_seed

    def __iter__(self):
        return iter([(index, self.augment_seed) for index in self.order])

    def __len__(self) -> int:
        return len(self.order)


def make_loader(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    transform: Callable,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    order: Sequence[int] | EpochSampler | None = None,
    augment_seed: int | None = None,
    draft_size: int | None = None,
    persistent: bool = False,
):
    """Batches in `order` (default: as given), or as an EpochSampler says. Each batch is
    (images, labels, indices, failed). `persistent` keeps the workers alive between passes (a loader that is
    iterated once per epoch)."""
    import torch
    from torch.utils.data import DataLoader

    dataset = _dataset_class()(paths, labels, transform, augment_seed, draft_size)
    sampler = order if isinstance(order, EpochSampler) or order is None else list(order)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=pin_memory,  # page-locked host memory makes non_blocking copies to CUDA asynchronous
        collate_fn=collate_readable,
        # Every new iterator draws a seed from this generator; without one it would draw from the global RNG
        # and shift the dropout masks of everything after it, so a resumed run would drift from a straight one.
        generator=torch.Generator().manual_seed(augment_seed or 0),
    )


def default_workers() -> int:
    """Loader processes: none on 2 cores or fewer, else cores - 1 (at most 4), leaving a core for the model.

    On 2 cores a worker process competes with the model's two compute threads: training measured 33 img/s
    with no worker against 30 with one (500x375 JPEGs), and 16.5 against 10.7 (4000x3000); docs/performance.md.
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files, folders (searched recursively, class subfolders or not) and globs -> (image paths, problems).

    A file named explicitly is kept whatever its extension; files found in folders or by globs must look
    like images. Order is stable: inputs in the order given, each folder's files sorted.
    """
    import glob

    found: list[str] = []
    problems: list[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found.append(item)
            continue
        if os.path.isdir(item):
            matches = [item]
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                problems.append(f"{item}: no such file, folder or match")
                continue
        before = len(found)
        for match in matches:
            if os.path.isdir(match):
                for directory, subdirs, files in os.walk(match, followlinks=True):
                    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                    found.extend(os.path.join(directory, f) for f in sorted(files) if is_image_file(f))
            elif is_image_file(match):
                found.append(match)
        if len(found) == before:
            problems.append(f"{item}: no images found")
    seen: set[str] = set()
    unique = [p for p in found if not (p in seen or seen.add(p))]
    return unique, problems
