"""Preprocessing: the one definition of how an image becomes the model's input, stored in every checkpoint
and rebuilt by evaluate, predict and export. It is one torchvision `transforms.v2` pipeline cut in two: the
deterministic decode half (what the decoded-image cache holds) and the crop half (random for training)."""

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

    def train_crop(self) -> Callable:
        """The second half for training, from decode_transforms' tensor: random crop, random flip, normalise."""
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.RandomCrop(self.image_size), v2.RandomHorizontalFlip(), *self._tail()])

    def eval_crop(self) -> Callable:
        """The second half for evaluation: the centre crop, normalised; nothing random."""
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.CenterCrop(self.image_size), *self._tail()])

    def train_transforms(self) -> Callable:
        """A PIL image to a normalised training tensor: decode_transforms then train_crop, the very same ops
        whether an image comes from the file or from the cache."""
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.train_crop()])

    def eval_transforms(self) -> Callable:
        from torchvision.transforms import v2

        return v2.Compose([self.decode_transforms(), self.eval_crop()])
