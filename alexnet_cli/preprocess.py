"""Preprocessing: the one definition of how an image becomes the model's input, stored in every checkpoint
and rebuilt by evaluate, predict and export. It is one torchvision `transforms.v2` pipeline cut in two: the
deterministic decode half (what the decoded-image cache holds) and the crop half (random for training).

The crop half ends in one of two ways. The uint8 path (the default): each sample stays the uint8 crop, with
its flip drawn but not made (`Pixels`); a batch of them (`PixelBatch`) goes to the device as uint8, a quarter
of the bytes, and is flipped, scaled and normalised there in one batched pass. The float path does the same
per sample on the CPU (`on_device=False`); both give the same numbers, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from alexnet_cli.errors import DataError

# ImageNet statistics, as torchvision's weights use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def decode_transforms(self) -> Callable:
        """The deterministic first half, a PIL image to a uint8 CHW tensor at the resize: what the cache holds."""
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        return v2.Compose([v2.Resize(self.resize_size, interpolation=mode, antialias=True), v2.PILToTensor()])

    def _tail(self) -> list:
        import torch
        from torchvision.transforms import v2

        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def train_crop(self, on_device: bool = True) -> Callable:
        """The second half for training, from decode_transforms' tensor: random crop, random flip, normalise
        (on the device: a `Pixels` sample whose flip is drawn but not made)."""
        from torchvision.transforms import v2

        if on_device:
            return v2.Compose([v2.ToImage(), v2.RandomCrop(self.image_size), ToPixels(self.mean, self.std, 0.5)])
        return v2.Compose([v2.ToImage(), v2.RandomCrop(self.image_size), v2.RandomHorizontalFlip(), *self._tail()])

    def eval_crop(self, on_device: bool = True) -> Callable:
        """The second half for evaluation: the centre crop, normalised; nothing random."""
        from torchvision.transforms import v2

        if on_device:
            return v2.Compose([v2.ToImage(), v2.CenterCrop(self.image_size), ToPixels(self.mean, self.std)])
        return v2.Compose([v2.ToImage(), v2.CenterCrop(self.image_size), *self._tail()])

    def train_transforms(self, on_device: bool = True) -> Callable:
        """A PIL image to a training sample: decode_transforms then train_crop, the very same ops whether an
        image comes from the file or from the cache."""
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.train_crop(on_device)])

    def eval_transforms(self, on_device: bool = True) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.eval_crop(on_device)])


@dataclass(frozen=True)
class Pixels:
    """One sample on the uint8 path: the crop's pixels (uint8, CHW) and whether the device flips it."""

    pixels: Any
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ToPixels:
    """The end of the uint8 path. The flip is drawn exactly as v2.RandomHorizontalFlip draws it (one
    torch.rand(1) after the crop's draws: flip when below p), so the random streams and every later draw are
    those of the float path; PixelBatch makes it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], flip_p: float = 0.0) -> None:
        self.mean, self.std, self.flip_p = tuple(mean), tuple(std), flip_p

    def __call__(self, image) -> Pixels:
        import torch

        flip = bool(torch.rand(1) < self.flip_p) if self.flip_p > 0 else False
        return Pixels(image.as_subclass(torch.Tensor), flip, self.mean, self.std)


@dataclass(frozen=True)
class PixelBatch:
    """A batch on the uint8 path, as collate_readable stacks it: uint8 NCHW and a bool per image."""

    pixels: Any
    flips: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def stack(cls, samples: list[Pixels]) -> PixelBatch:
        import torch

        return cls(torch.stack([s.pixels for s in samples]), torch.tensor([s.flip for s in samples]),
                   samples[0].mean, samples[0].std)

    def __len__(self) -> int:
        return len(self.pixels)

    def pin_memory(self) -> PixelBatch:  # DataLoader(pin_memory=True) calls this
        return PixelBatch(self.pixels.pin_memory(), self.flips, self.mean, self.std)

    def to_model(self, device, dtype=None, memory_format=None):
        """On the device: flip, scale to [0, 1] and normalise, with the very ops the float path runs per
        sample (torchvision's v2 functionals), batched."""
        import torch
        from torchvision.transforms.v2 import functional as F

        images = self.pixels.to(device, non_blocking=True)
        if bool(self.flips.any()):
            flips = self.flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
            images = torch.where(flips, F.horizontal_flip(images), images)
        images = F.normalize(F.to_dtype(images, torch.float32, scale=True), list(self.mean), list(self.std),
                             inplace=True)
        return images.to(dtype=dtype, memory_format=memory_format or torch.channels_last)
