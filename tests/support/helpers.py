"""What the tests share beside their fixtures: the suite's small settings, tiny synthetic image folders, the
CLI runner's call, and the environment of a subprocess test. The fixtures themselves are in conftest.py."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from alexnet_test_arch import TEST_ARCH
from PIL import Image
from typer.testing import CliRunner, Result

from alexnet_cli.data.sources.synthetic import make_shapes_folder
from alexnet_cli.observer import SilentObserver

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parent.parent  # the repository: alexnet_cli/, docs/, pyproject.toml
# The smallest input the default alexnet accepts (models/registry.py): keeps every test fast.
TINY = 67
# Where a test trains and the network's size is not its subject: the small architecture at the smallest input.
SMALL = ["--arch", TEST_ARCH, "--image-size", str(TINY)]
FAST_TRAIN = [*SMALL, "--batch-size", "8", "--workers", "0"]

__all__ = ["FAST_TRAIN", "ROOT", "SMALL", "SUPPORT", "TEST_ARCH", "TINY", "StopAfterEpoch", "built_once",
           "env_without_debug", "invoke", "make_shapes", "one_error_line", "solid_folder"]


def make_shapes(root: Path) -> Path:
    """root/train and root/val, two classes (circle, square), 80x80 PNGs: 8 and 3 per class, always the same."""
    make_shapes_folder(root / "train", classes=("circle", "square"), per_class=8, size=80, seed=1)
    make_shapes_folder(root / "val", classes=("circle", "square"), per_class=3, size=80, seed=2)
    return root


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """basetemp/name, made by build(folder) the first time a worker asks for it. A module or session fixture
    that trains builds through this: pytest-xdist tears a module's fixtures down when its worker runs out of
    queued tests, and a fixture set up again then finds its run already there instead of training again."""
    root = tmp_path_factory.getbasetemp() / name
    if not (root / ".built").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build(root)
        (root / ".built").touch()
    return root


def solid_folder(root: Path, per_class: int, seed: int) -> Path:
    """Dark against bright images with a little noise: separable by anything that learns at all."""
    rng = random.Random(seed)
    for name, base in (("dark", 20), ("bright", 235)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (72, 72), tuple(max(0, min(255, base + rng.randint(-15, 15))) for _ in range(3)))
            image.save(root / name / f"{name}_{i}.png")
    return root


def invoke(runner: CliRunner, args: list[str]) -> Result:
    from alexnet_cli.cli import app

    return runner.invoke(app, args, catch_exceptions=False)


def env_without_debug() -> dict[str, str]:
    """The environment for a subprocess test: no ALEXNET_DEBUG, and the suite's architecture registered in
    every Python process it starts (support/sitecustomize.py)."""
    env = dict(os.environ)
    env.pop("ALEXNET_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def one_error_line(result: Result) -> str:
    """The run's single `error:` line; fails if there is none, more than one, or a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0]


class StopAfterEpoch(SilentObserver):
    """An observer that sends SIGTERM to this process when epoch 1 ends: the run stops at epoch 2's first step,
    between two steps, as a signal from outside stops it."""

    def epoch_end(self, row, epochs, improved):
        if row["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class OneImage:
    """A stand-in image cache that holds one decoded image for every path."""

    def __init__(self, image) -> None:
        self.image = image

    def get(self, path):
        return self.image


def sample_pixels(crop, image, augment_seed: int, index: int):
    """Sample `index` of an epoch as the loader makes it: ImageDataset seeds the draws by (seed, index)."""
    from alexnet_cli.data.loading import ImageDataset

    dataset = ImageDataset([f"{i}.png" for i in range(index + 1)], None, crop, cache=OneImage(image),
                           from_cache=crop)
    return dataset[(index, augment_seed)][0]


def sample(crop, image, augment_seed: int, index: int):
    """The sample's tensor: on the uint8 path, its pixels and its flip and erasing box, which decide the rest."""
    import torch

    out = sample_pixels(crop, image, augment_seed, index)
    if hasattr(out, "pixels"):
        return torch.cat([out.pixels.flatten().float(), torch.tensor([out.flip, *(out.erase or (-1,) * 4)])])
    return out
