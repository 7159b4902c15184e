"""Shared helpers for the bench scripts: statistics rows, a matmul peak, and the original script's loop."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def row(name: str, values: list[float], unit: str = "", digits: int = 1) -> str:
    fmt = f"{{:.{digits}f}}"
    return (f"{name:<34} min {fmt.format(min(values))}{unit}  median {fmt.format(statistics.median(values))}{unit}  "
            f"max {fmt.format(max(values))}{unit}")


def cpu_name() -> str:
    """The CPU's model name, to print beside every figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def alexnet(*args: str) -> subprocess.CompletedProcess:
    """`alexnet ARGS` in a fresh process, output captured: what a user's shell would run."""
    return subprocess.run([sys.executable, "-m", "alexnet_cli", *args], check=False, capture_output=True, text=True)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, size: int | None = None, rounds: int = 5) -> float:
    """The best FLOP/s of a square matmul in `dtype` on `device`: the ceiling a training step is compared to."""
    import torch

    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    best = float("inf")
    repeats = 10 if device.type == "cuda" else 3
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


def training_flops_per_image(arch: str, num_classes: int, image_size: int) -> float:
    """FLOPs of one forward and backward pass per image, counted by torch.utils.flop_counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from alexnet_cli.models.alexnet import build_model

    model = build_model(arch, num_classes=num_classes)
    x = torch.randn(2, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


class OriginalLoop:
    """The write-up's train.py step: eager fp32, NCHW, torch.optim.Adam with its defaults, cross-entropy."""

    def __init__(self, model, lr: float = 1e-4) -> None:
        import torch

        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.criterion = torch.nn.CrossEntropyLoss()

    def step(self, images, labels) -> None:
        self.optimizer.zero_grad()
        loss = self.criterion(self.model(images), labels)
        loss.backward()
        self.optimizer.step()


def make_jpeg_folder(root: Path, count: int, size: tuple[int, int], classes: int = 2, seed: int = 0) -> Path:
    """`count` photo-sized JPEGs (smooth colour fields with noise, so they compress like photos) in class folders."""
    import random

    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    width, height = size
    for i in range(count):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        if path.exists():
            continue
        small = Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(small)
        for _ in range(12):
            x, y = rng.randrange(64), rng.randrange(48)
            draw.ellipse((x, y, x + rng.randrange(4, 30), y + rng.randrange(4, 30)),
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        image = small.resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        noise = Image.effect_noise(size, 24).convert("RGB")
        Image.blend(image, noise, 0.15).save(path, quality=90)
    return root


