"""Deterministic synthetic image folders drawn with Pillow: for tests, benchmarks and the demo.

Each class is a shape (circle, square, triangle, ...) drawn at a random position, size, rotation and colour on
a noisy, randomly tinted background, so that telling the classes apart needs the shape, not a colour.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle", "star", "cross")


def draw_shape(shape: str, size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    background = tuple(rng.randrange(40, 216) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(size // 4):  # speckle noise: no class can be told from a flat background
        x, y = rng.randrange(size), rng.randrange(size)
        draw.point((x, y), fill=tuple(rng.randrange(256) for _ in range(3)))
    colour = tuple((c + rng.randrange(80, 176)) % 256 for c in background)  # always far from the background
    radius = rng.uniform(0.18, 0.32) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    angle = rng.uniform(0, 2 * math.pi)

    def polygon(n: int, inner: float | None = None) -> list[tuple[float, float]]:
        points = []
        steps = n * 2 if inner else n
        for i in range(steps):
            r = radius * (inner if inner and i % 2 else 1.0)
            a = angle + 2 * math.pi * i / steps
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return points

    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    elif shape == "square":
        draw.polygon(polygon(4), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(3), fill=colour)
    elif shape == "star":
        draw.polygon(polygon(5, inner=0.45), fill=colour)
    elif shape == "cross":
        w = radius * 0.35
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon([
                (cx - dx * radius + px, cy - dy * radius + py), (cx + dx * radius + px, cy + dy * radius + py),
                (cx + dx * radius - px, cy + dy * radius - py), (cx - dx * radius - px, cy - dy * radius - py),
            ], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def make_shapes_folder(
    root: str | Path, classes: tuple[str, ...] = SHAPES[:3], per_class: int = 20, size: int = 96, seed: int = 0,
    extension: str = ".png",
) -> Path:
    """Write root/<class>/<class>_<i><extension>, the same bytes for the same arguments."""
    root = Path(root)
    for label, shape in enumerate(classes):
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"{seed}-{shape}")
        for i in range(per_class):
            draw_shape(shape, size, rng).save(folder / f"{shape}_{i:04d}{extension}")
    return root
