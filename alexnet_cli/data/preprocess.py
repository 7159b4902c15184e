"""Preprocessing: the one definition of how an image becomes the model's input, stored in every checkpoint
and rebuilt by evaluate, predict and export. It is one torchvision `transforms.v2` pipeline cut in two: the
deterministic decode half (what the decoded-image cache holds) and the crop half (random for training).

The crop half ends in one of two ways. The uint8 path (the default): each sample stays the uint8 crop, with
its flip and random-erasing box drawn but not made (`Pixels`); a batch of them (`PixelBatch`) goes to the
device as uint8, a quarter of the bytes, and is flipped, scaled, normalised and erased there in one batched
pass. The float path does the same per sample on the CPU (`on_device=False`); both give the same numbers,
bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from alexnet_cli.config.settings import TrainConfig
from alexnet_cli.errors import DataError
from alexnet_cli.models.registry import arch_info

# ImageNet statistics, as torchvision's weights use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """The one definition of preprocessing, stored in every checkpoint and rebuilt by evaluate and predict.

    Training: resize the short side to `resize_size` (about 256/227 of the input, as in the paper), random
    crop to `image_size`, random horizontal flip. Evaluation: the same resize, then a centre crop.

    The whole frame (models.FRAMES, for small images): `resize_size` is `image_size`, so evaluation sees the
    image whole, and training crops it from within a black border `pad` pixels wide, which shifts it as far
    as the paper's crop would; ten-crop TTA cuts its corners from the same padded frame.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    pad: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pad < self.image_size or min(self.image_size, self.resize_size) < 1:
            raise DataError(f"the stored preprocessing is malformed: input {self.image_size}, resize "
                            f"{self.resize_size}, pad {self.pad}")

    @classmethod
    def for_arch(cls, image_size: int, native_size: int, frame: str = "crop") -> Preprocess:
        # 256 is to 227 (or torchvision's 224) as resize_size is to image_size.
        resize_size = round(image_size * 256 / native_size)
        if frame == "full":
            return cls(image_size=image_size, resize_size=image_size, pad=(resize_size - image_size) // 2)
        return cls(image_size=image_size, resize_size=resize_size)

    @classmethod
    def for_training(cls, cfg: TrainConfig) -> Preprocess:
        """A training run's: its input size and framing (--image-size, --frame), stored in every checkpoint."""
        return cls.for_arch(cfg.effective_image_size, arch_info(cfg.arch).default_image_size, cfg.frame or "crop")

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
                pad=int(data.get("pad", 0)),  # checkpoints from before --frame: the crop
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the stored preprocessing is malformed: {exc}") from None

    # The training half after the decode is augment.Augmentation.train_crop: what it does is a setting of
    # the run (--augment and kin), not of the model, so it is not stored here.

    def decode_transforms(self) -> Callable:
        """The deterministic first half, a PIL image to a uint8 CHW tensor at the resize: what the cache holds.
        torchvision's v2.Resize and PILToTensor, written out (ShortSideResize)."""
        return ShortSideResize(self.resize_size, self.interpolation)

    def _tail(self) -> list:
        from torchvision.transforms import v2

        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def eval_crop(self, on_device: bool = True) -> Callable:
        """The second half for evaluation: the centre crop, normalised; nothing random. On the uint8 path,
        without torchvision (CenterCropPixels)."""
        if on_device:
            return CenterCropPixels(self.image_size, self.mean, self.std)
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.CenterCrop(self.image_size), *self._tail()])

    def eval_transforms(self, on_device: bool = True) -> Callable:
        return Chain(self.decode_transforms(), self.eval_crop(on_device))


# What evaluate and predict run is written out below in torch and Pillow, rather than taken from
# torchvision.transforms.v2: importing torchvision imports torch._dynamo (through torchvision.ops), about half
# of what importing torch and torchvision costs (docs/performance.md). Each step does what torchvision's does,
# op for op, and tests hold the two to the same bits (tests/runtime/test_performance.py). Training keeps v2.

# PIL.Image.Resampling per interpolation name, as torchvision.transforms.functional.pil_modes_mapping has it
_PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "nearest-exact": 0, "box": 4, "hamming": 5, "lanczos": 1}


class Chain:
    def __init__(self, *steps: Callable) -> None:
        self.steps = steps

    def __call__(self, value):
        for step in self.steps:
            value = step(value)
        return value


class ShortSideResize:
    """v2.Resize(size) on a PIL image, then v2.PILToTensor: the short side to `size` (the long one scaled
    and truncated, as torchvision computes it), Pillow's antialiased filter, uint8 CHW."""

    def __init__(self, size: int, interpolation: str = "bilinear") -> None:
        if interpolation not in _PIL_FILTERS:
            raise DataError(f"unknown interpolation {interpolation!r}: use {', '.join(_PIL_FILTERS)}")
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, resample=_PIL_FILTERS[self.interpolation])
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.view(image.height, image.width, len(image.getbands())).permute(2, 0, 1)


class RandomCropPixels:
    """v2.RandomCrop(size, padding=pad) of a uint8 CHW tensor, without importing torchvision: black padding on
    every side, then the same draws from torch's generator (the top, then the left, each only where there is
    room), so the same crops bit for bit. A loader process started by spawn or forkserver then does not import
    torchvision to unpickle the default training transform, which was about half of such a process's start
    (docs/performance.md)."""

    def __init__(self, size: int, pad: int = 0) -> None:
        self.size, self.pad = size, pad

    def __call__(self, image):
        if self.pad:
            image = torch.nn.functional.pad(image, [self.pad] * 4, value=0)
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(f"Required crop size {(self.size, self.size)} is larger than input image size "
                             f"{(height, width)}.")
        top = int(torch.randint(0, height - self.size + 1, size=())) if height > self.size else 0
        left = int(torch.randint(0, width - self.size + 1, size=())) if width > self.size else 0
        return image[..., top:top + self.size, left:left + self.size]


class CenterCropPixels:
    """v2.CenterCrop(size) of a uint8 CHW tensor, ending the uint8 path (Pixels, never flipped)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, image) -> Pixels:
        height, width = image.shape[-2:]
        if height < self.size or width < self.size:  # torchvision pads first; rare enough to leave to it
            from torchvision.transforms import v2

            return ToPixels(self.mean, self.std)(v2.functional.center_crop(image, [self.size]))
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        crop = image[..., top:top + self.size, left:left + self.size]
        return Pixels(crop.as_subclass(torch.Tensor), False, self.mean, self.std)


@dataclass(frozen=True)
class Pixels:
    """One sample on the uint8 path: the crop's pixels (uint8, CHW), whether the device flips it, and the box
    it erases after normalising (top, left, height, width), if any."""

    pixels: torch.Tensor  # uint8, CHW
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    erase: tuple[int, int, int, int] | None = None


NO_BOX = (0, 0, 0, 0)


class ToPixels:
    """The end of the uint8 path. The flip is drawn exactly as v2.RandomHorizontalFlip draws it (one
    torch.rand(1) after the crop's draws: flip when below p), and the erasing box as v2.RandomErasing draws it
    (one torch.rand(1), then its own make_params), so the random streams and every later draw are those of the
    float path; PixelBatch makes them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], flip_p: float = 0.0,
                 erasing_p: float = 0.0) -> None:
        self.mean, self.std, self.flip_p, self.erasing_p = tuple(mean), tuple(std), flip_p, erasing_p
        if erasing_p > 0:
            from torchvision.transforms import v2

            self.eraser = v2.RandomErasing(p=erasing_p, value=0)  # the float path's, for its make_params

    def __call__(self, image) -> Pixels:
        flip = bool(torch.rand(1) < self.flip_p) if self.flip_p > 0 else False
        erase = None
        if self.erasing_p > 0 and torch.rand(1) < self.erasing_p:
            box = self.eraser.make_params([image])
            if box["v"] is not None:  # no box fitted in ten tries: torchvision leaves the image be
                erase = (box["i"], box["j"], box["h"], box["w"])
        return Pixels(image.as_subclass(torch.Tensor), flip, self.mean, self.std, erase)


@dataclass(frozen=True)
class PixelBatch:
    """A batch on the uint8 path, as collate_readable stacks it: uint8 NCHW, a bool per image, and an
    erasing box per image (N x 4; height 0 where none), or None when no image erases."""

    pixels: torch.Tensor  # uint8, NCHW
    flips: torch.Tensor  # bool, N
    mean: tuple[float, ...]
    std: tuple[float, ...]
    erase: torch.Tensor | None = None  # int, N x 4

    @classmethod
    def stack(cls, samples: list[Pixels]) -> PixelBatch:
        erase = None
        if any(s.erase is not None for s in samples):
            erase = torch.tensor([s.erase or NO_BOX for s in samples])
        return cls(torch.stack([s.pixels for s in samples]), torch.tensor([s.flip for s in samples]),
                   samples[0].mean, samples[0].std, erase)

    def __len__(self) -> int:
        return len(self.pixels)

    def pin_memory(self) -> PixelBatch:  # DataLoader(pin_memory=True) calls this
        return PixelBatch(self.pixels.pin_memory(), self.flips, self.mean, self.std, self.erase)

    def to_model(self, device, dtype=None, memory_format=None):
        """On the device: flip, scale to [0, 1], normalise and erase, with the very ops the float path's
        torchvision v2 functionals run per sample, batched."""
        images = self.pixels.to(device, non_blocking=True)
        if bool(self.flips.any()):  # v2.functional.horizontal_flip
            flips = self.flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
            images = torch.where(flips, images.flip(-1), images)
        images = images.to(torch.float32).mul_(1.0 / 255)  # v2.functional.to_dtype(scale=True)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
        images = images.sub_(mean).div_(std)  # v2.functional.normalize
        if self.erase is not None:  # v2.functional.erase with value 0: each image's box becomes the mean
            top, left, height, width = self.erase.to(device, non_blocking=True).unsqueeze(-1).unbind(1)
            rows = torch.arange(images.shape[-2], device=images.device)
            cols = torch.arange(images.shape[-1], device=images.device)
            in_rows = (rows >= top) & (rows < top + height)  # N x H
            in_cols = (cols >= left) & (cols < left + width)  # N x W
            images = images.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1), 0.0)
        return images.to(dtype=dtype, memory_format=memory_format or torch.channels_last)
