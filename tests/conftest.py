"""Shared fixtures: tiny synthetic image folders in tmp_path, and a CLI runner with a pinned width."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alexnet_cli.synthetic import make_shapes_folder

# The smallest input the default alexnet accepts (see models.ARCHITECTURES): keeps every test fast.
TINY = 67
FAST_TRAIN = ["--image-size", str(TINY), "--batch-size", "8", "--workers", "0"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own folder (runs/ lands there) with a fixed 100-column console."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    # What the tool remembers between runs (the CPU's bf16 measurement) goes to the test's folder, not ~/.cache
    monkeypatch.setenv("ALEXNET_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.delenv("ALEXNET_DEBUG", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def shapes(tmp_path) -> Path:
    """data/train and data/val, two classes (circle, square), 80x80 PNGs."""
    root = tmp_path / "data"
    make_shapes_folder(root / "train", classes=("circle", "square"), per_class=8, size=80, seed=1)
    make_shapes_folder(root / "val", classes=("circle", "square"), per_class=3, size=80, seed=2)
    return root


def solid_folder(root: Path, per_class: int, seed: int) -> Path:
    """Dark against bright images with a little noise: separable by anything that learns at all."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    for name, base in (("dark", 20), ("bright", 235)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (72, 72), tuple(max(0, min(255, base + rng.randint(-15, 15))) for _ in range(3)))
            image.save(root / name / f"{name}_{i}.png")
    return root


def invoke(runner: CliRunner, args: list[str]):
    from alexnet_cli.cli import app

    return runner.invoke(app, args, catch_exceptions=False)


def env_without_debug() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ALEXNET_DEBUG", None)
    return env


def one_error_line(result) -> str:
    """The run's single `error:` line; fails if there is none, more than one, or a traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0]
