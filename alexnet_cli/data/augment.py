"""Training augmentation: the per-sample policies (`--augment`, `--random-erasing`, `--pca-lighting`) and the
per-batch mixes (`--mixup`, `--cutmix`), all from torchvision's `transforms.v2` but the paper's PCA lighting.

Each sample's draws come from torch's generator, seeded per (seed, epoch, index) by the loader
(loading.ImageDataset), so a sample is augmented the same in any loader process and after a resume. The
batch mixes draw from the training process's own stream, which every checkpoint saves.

Crop, flip, the policies and random erasing keep the uint8 path: each sample's flip and erasing box are drawn
in the loader and made on the device, after normalising, batched. PCA lighting acts on float pixels, sample
by sample: with it, the samples are finished on the CPU as floats (the float path), and the run says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alexnet_cli.config.settings import TrainConfig
from alexnet_cli.config.vocabulary import AUGMENT_POLICIES, check_choice
from alexnet_cli.data.preprocess import Chain, RandomCropPixels, ToPixels
from alexnet_cli.errors import ConfigError


@dataclass(frozen=True)
class Augmentation:
    """What a training sample goes through after the decode half (preprocess.Preprocess.decode_transforms)."""

    policy: str = "flip"  # flip: random crop + flip; none: the centre crop alone; else crop + policy + flip
    random_erasing: float = 0.0  # probability per image
    pca_sigma: float = 0.0  # the paper's alpha ~ N(0, sigma)
    pca_eigval: tuple[float, ...] = ()  # the training set's RGB covariance, on the [0, 1] scale
    pca_eigvec: tuple[tuple[float, ...], ...] = ()  # columns are the eigenvectors

    def __post_init__(self) -> None:
        check_choice("--augment", self.policy, AUGMENT_POLICIES)

    @classmethod
    def from_config(cls, cfg: TrainConfig, pca: tuple[Sequence[float], Sequence[Sequence[float]]] | None = None
                    ) -> Augmentation:
        """A run's augmentation; `pca` is (eigenvalues, eigenvectors) of the training set's colours."""
        eigval, eigvec = pca if pca is not None else ((), ())
        return cls(cfg.augment, cfg.random_erasing, cfg.pca_lighting, tuple(eigval), tuple(tuple(v) for v in eigvec))

    @property
    def on_cpu_floats(self) -> bool:
        """True when a step needs float pixels per sample, so the float path finishes samples on the CPU."""
        return self.pca_sigma > 0

    def describe(self) -> str:
        parts = {"flip": "random crop and flip", "none": "centre crop, no augmentation"}.get(
            self.policy, f"random crop, {self.policy}, flip")
        if self.pca_sigma > 0:
            parts += f", PCA lighting (sigma {self.pca_sigma:g})"
        if self.random_erasing > 0:
            parts += f", random erasing (p {self.random_erasing:g})"
        return parts

    def train_crop(self, preprocess, on_device: bool = True) -> Callable:
        """The training half after the decode, from a uint8 CHW tensor at the resize. The draws come in the
        same order on both paths (crop, policy, flip), so the uint8 and float paths give the same samples."""
        if on_device and not self.on_cpu_floats and self.policy == "flip":  # the default, torchvision-free
            return Chain(RandomCropPixels(preprocess.image_size, preprocess.pad),
                         ToPixels(preprocess.mean, preprocess.std, 0.5, self.random_erasing))
        from torchvision.transforms import v2

        if self.policy == "none":
            steps = [v2.ToImage(), v2.CenterCrop(preprocess.image_size)]
        else:
            # the whole frame pads with black, as CIFAR recipes do; the crop framing's resize has room to crop
            steps = [v2.ToImage(), v2.RandomCrop(preprocess.image_size, padding=preprocess.pad or None),
                     *self._policy()]
        flip_p = 0.0 if self.policy == "none" else 0.5
        if on_device and not self.on_cpu_floats:
            return v2.Compose([*steps, ToPixels(preprocess.mean, preprocess.std, flip_p, self.random_erasing)])
        if flip_p:
            steps.append(v2.RandomHorizontalFlip(flip_p))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if self.pca_sigma > 0:
            steps.append(PCALighting(self.pca_sigma, self.pca_eigval, self.pca_eigvec))
        steps.append(v2.Normalize(preprocess.mean, preprocess.std))
        if self.random_erasing > 0:  # after normalising, as torchvision's reference does: 0 is the mean colour
            steps.append(v2.RandomErasing(p=self.random_erasing, value=0))
        return v2.Compose(steps)

    def _policy(self) -> list:
        from torchvision.transforms import v2

        return {
            "flip": [],
            "trivial": [v2.TrivialAugmentWide()],
            "randaugment": [v2.RandAugment()],
            "autoaugment": [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
            "augmix": [v2.AugMix()],
        }[self.policy]

    def to_dict(self) -> dict[str, Any]:
        return {"augment": self.policy, "random_erasing": self.random_erasing, "pca_lighting": self.pca_sigma,
                "pca_eigval": list(self.pca_eigval), "pca_eigvec": [list(v) for v in self.pca_eigvec]}


class PCALighting:
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every RGB pixel, alpha_i drawn
    from N(0, sigma) once per image, (lambda_i, p_i) the eigenvalues and eigenvectors of the training set's
    RGB covariance. On a float CHW image in [0, 1], before normalising."""

    def __init__(self, sigma: float, eigval, eigvec) -> None:
        self.sigma, self.eigval, self.eigvec = sigma, tuple(eigval), tuple(tuple(row) for row in eigvec)

    def __call__(self, image):
        alpha = torch.randn(3) * self.sigma
        shift = torch.tensor(self.eigvec, dtype=torch.float32) @ (alpha * torch.tensor(self.eigval))
        return image + shift.view(3, 1, 1).to(image.dtype)


def rgb_pca(images: Iterable) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """(eigenvalues, eigenvectors as columns) of the RGB covariance over every pixel of `images` (uint8 CHW
    tensors, 3 channels), on the [0, 1] scale, largest eigenvalue first. Sums in float64, image by image."""
    count = 0
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    for image in images:
        pixels = image.reshape(3, -1).to(torch.float64) / 255.0
        count += pixels.shape[1]
        total += pixels.sum(1)
        outer += pixels @ pixels.T
    if count < 2:
        raise ConfigError("--pca-lighting needs training images to measure their colours")
    mean = total / count
    covariance = (outer - count * torch.outer(mean, mean)) / (count - 1)
    eigval, eigvec = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(eigval, descending=True)
    eigval, eigvec = eigval[order].clamp(min=0), eigvec[:, order]
    return tuple(eigval.tolist()), tuple(tuple(row) for row in eigvec.tolist())


def batch_mix(mixup: float, cutmix: float, num_classes: int):
    """v2.MixUp and/or v2.CutMix on (images, labels) -> (mixed images, soft labels); one of the two, drawn
    per batch, when both are given (as torchvision's reference does). None when both are off."""
    from torchvision.transforms import v2

    if mixup <= 0 and cutmix <= 0:
        return None
    mixes = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def class_weights(counts: list[int], power: float) -> list[float]:
    """Inverse class frequency to `power` (Ultralytics' cls_pw): w_c = (N / (C * n_c)) ** power, so that with
    power 1 every class weighs the same in the loss, and with power 0 nothing changes."""
    total, classes = sum(counts), len(counts)
    if any(n == 0 for n in counts):
        raise ConfigError("--class-weights needs at least one training image of every class")
    return [(total / (classes * n)) ** power for n in counts]


def imbalance_warning(counts: dict[str, int]) -> str | None:
    """The data summary's warning when the largest class has more than 3 times the images of the smallest."""
    largest, smallest = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    if counts[smallest] == 0 or counts[largest] <= 3 * counts[smallest]:
        return None
    return (f"classes are imbalanced: {largest} has {counts[largest]:,} images, {smallest} {counts[smallest]:,} "
            f"({counts[largest] / counts[smallest]:.1f}x); consider --class-weights auto or --balanced-sampler")
