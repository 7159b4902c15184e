"""Test-time augmentation for evaluate and predict (`--tta flip|ten-crop`): the model sees several views of
each image and their class probabilities are averaged.

flip: the centre crop and its mirror image, both made on the device from one batch. ten-crop: the paper's
ten 224-pixel patches, the four corners and the centre of the resized image and their mirror images, cut
by torchvision's `TenCrop` on the CPU; with the whole frame, of the image in the black border that training
shifted it within (Preprocess.pad), so the corners are the training crop's farthest shifts. The averaged
probabilities come back as their logarithm, so that everything downstream (softmax, cross-entropy,
arg-max) reads them as it reads logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alexnet_cli.data.preprocess import Chain, Preprocess
from alexnet_cli.runtime.context import to_device


class TenCrops:
    """A uint8 CHW image at the resize -> the ten crops, normalised floats, stacked as (10, C, H, W)."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.size, self.mean, self.std = preprocess.image_size, preprocess.mean, preprocess.std
        self.pad = preprocess.pad

    def __call__(self, image):
        from torchvision.transforms import v2

        image = v2.ToImage()(image)
        if self.pad:
            image = v2.functional.pad(image, [self.pad])
        crops = v2.TenCrop(self.size)(image)
        stacked = torch.stack([crop.as_subclass(torch.Tensor) for crop in crops])
        return v2.functional.normalize(stacked.to(torch.float32).div_(255), list(self.mean), list(self.std))


def eval_transforms(preprocess: Preprocess, mode: str) -> Callable:
    """What the loader makes of each image for this mode: the usual centre crop, or the ten crops."""
    if mode == "ten-crop":
        return Chain(preprocess.decode_transforms(), TenCrops(preprocess))
    return preprocess.eval_transforms()


def forward(model, images, device, dtype, mode: str = "none"):
    """The model's logits for a loader's batch, or with TTA the log of the views' mean probabilities."""
    if mode == "ten-crop":
        batch, views = images.shape[0], images.shape[1]
        logits = model(to_device(images.flatten(0, 1), device, dtype)).float()
        return logits.softmax(1).view(batch, views, -1).mean(1).log()
    batch = to_device(images, device, dtype)
    if mode == "flip":
        return ((model(batch).float().softmax(1) + model(batch.flip(-1)).float().softmax(1)) / 2).log()
    return model(batch)
