"""The AlexNet family: pure architecture, plus one typed builder that touches weights and the class count.

Three variants share one module layout (`features`, `avgpool`, `flatten`, `classifier`), so that the
summary, the checkpoint and the training loop treat them alike:

- ``alexnet``: the original write-up's single-tower network (227x227 input, 96-256-384-384-256).
- ``alexnet-paper``: Krizhevsky et al. 2012, with local response normalisation and the two-GPU grouping.
- ``alexnet-torchvision``: the "one weird trick" layout (64-192-384-256-256, 224x224 input), key-for-key
  compatible with ``torchvision.models.alexnet`` so that its ImageNet weights load unchanged.

Each entry of ``ARCHITECTURES`` holds its layout (widths, grouping, LRN, where dropout goes, the hidden width),
and one builder makes every entry from it, so a new variant is one more entry: the test suite registers a
narrow one that way (tests/support/alexnet_test_arch.py).

The adaptive pool before the classifier makes every variant accept inputs other than its native size: at
the native size it is a no-op (6x6 in, 6x6 out); above it, it averages down to 6x6; below the minimum
size the last max-pool would have nothing to pool, so the builder refuses such sizes up front.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alexnet_cli.errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # torch is imported lazily so that `alexnet --help` stays quick
    import torch
    from torch import nn


@dataclass(frozen=True)
class ArchInfo:
    """One entry of ARCHITECTURES: its name and input sizes, and the layout the one builder makes from it."""

    name: str
    default_image_size: int
    # Smallest square input the feature extractor accepts. Worked backwards from the last max-pool, which
    # needs a 3x3 input: pool2 must output 3, so it needs 7, so conv1 must output 15; for conv1 (11, s4, p0)
    # that is (H - 11)/4 + 1 >= 15, H >= 67; with padding 2 (torchvision) H >= 63. A test checks both.
    min_image_size: int
    description: str
    widths: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)  # conv1 to conv5's output channels
    conv1_padding: int = 0
    groups: tuple[int, int, int] = (1, 1, 1)  # conv2, conv4 and conv5's groups: (2, 2, 2) is the paper's two towers
    lrn: bool = False  # local response normalisation after conv1 and conv2
    dropout_first: bool = False  # torchvision puts dropout before each Linear, the write-up after each ReLU
    hidden: int = 4096  # the two hidden fully connected layers' width


ARCHITECTURES: dict[str, ArchInfo] = {
    "alexnet": ArchInfo(
        "alexnet", 227, 67, "the original write-up: single tower, 96-256-384-384-256, 227x227 input"
    ),
    "alexnet-paper": ArchInfo(
        "alexnet-paper", 227, 67, "Krizhevsky et al. 2012: adds LRN and the two-tower grouping (groups=2)",
        groups=(2, 2, 2), lrn=True,
    ),
    "alexnet-torchvision": ArchInfo(
        "alexnet-torchvision", 224, 63, "torchvision's layout: 64-192-384-256-256, 224x224 input",
        widths=(64, 192, 384, 256, 256), conv1_padding=2, dropout_first=True,
    ),
}

# The paper's LRN constants (section 3.3): k=2, n=5, alpha=1e-4, beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def arch_info(name: str) -> ArchInfo:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        choices = ", ".join(ARCHITECTURES)
        raise ConfigError(f"unknown architecture {name!r}: choose one of {choices}") from None


# Small images (MNIST, Fashion-MNIST, CIFAR: 28 to 32 pixels) train at SMALL_INPUT by default rather than
# the architecture's own size: 4.7 times a 28-pixel image is detail enough, and a step at batch 32 ran 129
# images/s against 55 at 227 on a 2-core CPU (docs/training.md, "Defaults measured on real data").
SMALL_IMAGE_SIDE = 64  # a median short side at most this is a small-image data set
SMALL_INPUT = 131


def small_images(median_short_side: int | None) -> bool:
    """Whether a data set is of small images, which get SMALL_INPUT and the whole frame by default."""
    return median_short_side is not None and median_short_side <= SMALL_IMAGE_SIDE


def auto_image_size(arch: str, median_short_side: int | None) -> int:
    """The input size when --image-size is not given: SMALL_INPUT for small images, else the arch's own."""
    info = arch_info(arch)
    if small_images(median_short_side):
        return max(info.min_image_size, SMALL_INPUT)
    return info.default_image_size


# How an image fills the input (--frame). crop: the paper's, a random crop of the image resized a little
# larger (256 to 227) for training and its centre crop for evaluation, which cuts off the border. full: the
# image resized to the input whole, the training crop shifting it within a black border of the same reach.
# Small images lose too much to the crop: 1.6 of a 28-pixel image's border pixels on every side at 131, and
# the whole frame was 0.53 points ahead on 12,000 Fashion-MNIST validation images over two seeds
# (docs/training.md, "The whole frame for small images").
FRAMES = ("crop", "full")


def auto_frame(median_short_side: int | None) -> str:
    """--frame left out: full for small images (the rule that picks SMALL_INPUT), else the paper's crop."""
    return "full" if small_images(median_short_side) else "crop"


def check_image_size(arch: str, image_size: int) -> None:
    info = arch_info(arch)
    if image_size < info.min_image_size:
        raise ConfigError(
            f"image size {image_size} is too small for {arch}: the minimum is {info.min_image_size} "
            f"(native {info.default_image_size})"
        )


def _alexnet_class():
    from torch import nn

    class AlexNet(nn.Module):
        """features -> adaptive 6x6 pool -> flatten (256*6*6 = 9216) -> classifier."""

        def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
            super().__init__()
            self.features = features
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.flatten = nn.Flatten(1)
            self.classifier = classifier

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.flatten(self.avgpool(self.features(x))))

    return AlexNet


def _features(info: ArchInfo):
    """conv1 11/4, pool, conv2 5 p2, pool, conv3-5 3 p1, pool; ReLU after every conv; optional LRN."""
    from torch import nn

    c1, c2, c3, c4, c5 = info.widths
    g2, g4, g5 = info.groups

    def norm() -> list[nn.Module]:
        # torch divides alpha by the window size (alpha/n * sum a^2); the paper does not (alpha * sum a^2).
        # Passing n*alpha makes torch compute exactly the paper's formula.
        if not info.lrn:
            return []
        return [nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_SIZE * LRN_ALPHA, beta=LRN_BETA, k=LRN_K)]

    return nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=info.conv1_padding),
        nn.ReLU(inplace=True),
        *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping: window 3 > stride 2
        nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=g2),
        nn.ReLU(inplace=True),
        *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),  # the paper's conv3 sees both towers
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=g4),
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=g5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _classifier(info: ArchInfo, num_classes: int, dropout: float):
    """FC 9216-4096-4096-N (conv5's 256 channels x 6 x 6 in). The write-up puts dropout after each ReLU;
    torchvision puts it before each Linear."""
    from torch import nn

    def block(n_in: int, n_out: int) -> list[nn.Module]:
        if info.dropout_first:
            return [nn.Dropout(dropout), nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        return [nn.Linear(n_in, n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]

    flat = info.widths[-1] * 6 * 6  # the adaptive pool's 6x6 output, flattened
    return nn.Sequential(*block(flat, info.hidden), *block(info.hidden, info.hidden),
                         nn.Linear(info.hidden, num_classes))


def _architecture(arch: str, num_classes: int, dropout: float) -> nn.Module:
    info = arch_info(arch)
    return _alexnet_class()(_features(info), _classifier(info, num_classes, dropout))


def pretrained_cache_path() -> str:
    """Where torchvision's weights API caches AlexNet_Weights.IMAGENET1K_V1 (under TORCH_HOME)."""
    import os

    import torch.hub
    from torchvision.models import AlexNet_Weights

    filename = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def pretrained_state_dict(progress: bool = True) -> Mapping[str, torch.Tensor]:
    """ImageNet weights through torchvision's API: downloaded and hash-checked once, then read from the cache."""
    from torchvision.models import AlexNet_Weights

    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        raise CheckpointError(
            f"could not get the ImageNet weights ({exc.__class__.__name__}: {exc}); "
            f"put alexnet-owt-7be5be79.pth at {pretrained_cache_path()} or go online once"
        ) from None


def init_weights(model: nn.Module) -> None:
    """From-scratch initialisation: He (fan_out, ReLU) for the convolutions, N(0, 0.01) for the linear layers,
    zero biases -- torchvision's VGG scheme, for the same reason: a deep ReLU net without batch norm.

    PyTorch's default init shrinks the activations at every layer, and a from-scratch AlexNet sat at chance
    loss for the first hundred or more steps on the demo data; with this one it leaves chance within the first
    epoch (docs/architecture.md gives the runs).
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def build_model(
    arch: str = "alexnet",
    *,
    num_classes: int = 1000,
    dropout: float = 0.5,
    pretrained: bool = False,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Build one of ARCHITECTURES with ``num_classes`` outputs.

    ``pretrained`` loads torchvision's ImageNet weights (only ``alexnet-torchvision`` has them); with a class
    count other than 1000, the last Linear is replaced by a freshly initialised head. ``state_dict`` loads
    weights the caller already has, such as a checkpoint's, and must match exactly.
    """
    from torch import nn

    arch_info(arch)
    if num_classes < 1:
        raise ConfigError(f"the number of classes must be at least 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if pretrained and state_dict is not None:
        raise ConfigError("give either pretrained weights or a state_dict, not both")
    if pretrained and arch != "alexnet-torchvision":
        raise ConfigError(f"ImageNet weights exist only for alexnet-torchvision, not {arch}")

    if state_dict is not None:
        return _with_weights(arch, num_classes, dropout, state_dict)
    model = _architecture(arch, 1000 if pretrained else num_classes, dropout)
    if not pretrained:
        init_weights(model)
    if pretrained:
        model.load_state_dict(pretrained_state_dict(progress))
        if num_classes != 1000:
            model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model


def _with_weights(arch: str, num_classes: int, dropout: float, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model made on the meta device and given `state_dict`'s tensors as its parameters: no random
    initialisation to overwrite, and no copy (a memory-mapped checkpoint's weights are read as they are used)."""
    import torch

    with torch.device("meta"):
        model = _architecture(arch, num_classes, dropout)
    try:
        model.load_state_dict(state_dict, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"the weights do not fit {arch} with {num_classes} classes: {first}") from None
    return model.float()  # a half-precision state_dict computes as the model always has: in fp32

