"""The AlexNet family as data: each architecture's name, input sizes and layout, and the rules that pick an input
size and framing for a data set. Torch-free, so that the CLI's options and `--help` read it for free; the
networks themselves are built from it in alexnet.py.

Each entry of ``ARCHITECTURES`` holds its layout (widths, grouping, LRN, where dropout goes, the hidden width),
and one builder makes every entry from it, so a new variant is one more entry: the test suite registers a
narrow one that way (tests/support/alexnet_test_arch.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet_cli.errors import ConfigError


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

def arch_info(name: str) -> ArchInfo:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        choices = ", ".join(ARCHITECTURES)
        raise ConfigError(f"unknown architecture {name!r}: choose one of {choices}") from None


# Small images (MNIST, Fashion-MNIST, CIFAR: 28 to 32 pixels) train at SMALL_INPUT by default rather than
# the architecture's own size: 4.7 times a 28-pixel image is detail enough, and a step there costs about a third
# of the pixels of one at 227 (docs/training.md, "Defaults measured on real data", has the speeds).
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
