"""Deterministic synthetic image folders drawn with Pillow: for tests, benchmarks and the demo.

Each class is a shape (circle, square, triangle, ...) drawn at a random position, size, rotation and colour on
a noisy, randomly tinted background, so that telling the classes apart needs the shape, not a colour.
"""

from __future__ import annotations

import colorsys
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")


def draw_shape(shape: str, size: int, rng: random.Random):
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
    """Write root/<class>/<class>_<i><extension>, the same bytes for the same arguments.

    Class names come from SHAPES (drawn by draw_shape) or TEXTURES (drawn by draw_texture)."""
    root = Path(root)
    for shape in classes:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"{seed}-{shape}")
        draw = draw_texture if shape in TEXTURES else draw_shape
        for i in range(per_class):
            draw(shape, size, rng).save(folder / f"{shape}_{i:04d}{extension}")
    return root


TEXTURES = ("stripes", "checks", "dots", "rings")


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(255 * red), round(255 * green), round(255 * blue)


def draw_texture(kind: str, size: int, rng: random.Random):
    """A dark pattern on a light ground, at a random scale, angle, phase and hue: the class is in the structure.

    Both colours are random (any hue, the pattern's hue near the ground's or not); only the polarity is fixed,
    as ink on paper is. With the polarity random too, a from-scratch AlexNet learnt far more slowly.
    """
    hue = rng.random()
    a = _rgb(hue, rng.uniform(0.1, 0.5), rng.uniform(0.85, 1.0))  # the ground: light
    b = _rgb((hue + rng.uniform(-0.2, 0.2)) % 1.0, rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.35))  # the pattern
    big = size * 2  # draw large, rotate, then crop the centre: no empty corners
    image = Image.new("RGB", (big, big), a)
    draw = ImageDraw.Draw(image)
    period = rng.uniform(0.08, 0.2) * size
    offset = rng.uniform(0, period)
    if kind == "stripes":
        x = -offset
        while x < big:
            draw.rectangle((x, 0, x + period / 2, big), fill=b)
            x += period
    elif kind == "checks":
        n = int(big / period) + 2
        for i in range(n):
            for j in range(n):
                if (i + j) % 2:
                    draw.rectangle((i * period - offset, j * period - offset,
                                    (i + 1) * period - offset, (j + 1) * period - offset), fill=b)
    elif kind == "dots":
        r = period * rng.uniform(0.18, 0.3)
        n = int(big / period) + 2
        for i in range(n):
            for j in range(n):
                cx, cy = i * period - offset, j * period - offset
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=b)
    elif kind == "rings":
        cx, cy = big / 2 + rng.uniform(-0.3, 0.3) * size, big / 2 + rng.uniform(-0.3, 0.3) * size
        radius: float = big
        while radius > 0:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=b)
            radius -= period / 2
            if radius <= 0:
                break
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=a)
            radius -= period / 2
    else:
        raise ValueError(f"unknown texture {kind!r}")
    image = image.rotate(rng.uniform(0, 180), resample=Image.Resampling.BILINEAR)
    left = (big - size) // 2
    return image.crop((left, left, left + size, left + size))
