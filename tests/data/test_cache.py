"""--cache: images decoded once, during the scan, and every epoch after reads them from memory."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from support.helpers import FAST_TRAIN, invoke, one_error_line

from alexnet_cli.data import cache as cachemod
from alexnet_cli.data import images, loading
from alexnet_cli.data.cache import ImageCache
from alexnet_cli.data.images import UnreadableImage
from alexnet_cli.data.preprocess import Preprocess

EXACT = ["--device", "cpu", "--precision", "fp32"]


def losses(run: Path) -> list[tuple[str, str, str]]:
    with open(run / "metrics.csv") as handle:
        return [(r["train_loss"], r["val_loss"], r["val_acc"]) for r in csv.DictReader(handle)]


def count_file_reads(monkeypatch) -> list[str]:
    """Record every path the loaders open (the scan uses its own decoder, so only epochs count)."""
    opened: list[str] = []
    real = images.open_image

    def counting(path, draft_size=None):
        opened.append(str(path))
        return real(path, draft_size)

    monkeypatch.setattr(loading, "open_image", counting)
    return opened


def test_a_cached_run_is_the_same_run_and_opens_no_file(runner, shapes, monkeypatch):
    opened = count_file_reads(monkeypatch)
    cached = invoke(runner, ["train", str(shapes / "train"), "--epochs", "2", "--output", "cached", "--cache", "ram",
                             *EXACT, *FAST_TRAIN])
    assert cached.exit_code == 0, cached.output
    # 16 training and 6 validation images, each 3 x 76 x 76 bytes at the resize for a 67-pixel input.
    assert "cache: 22 images decoded once and kept in memory (372 kB)" in cached.stderr
    assert opened == []  # two epochs of training and validation, and no file read after the scan

    plain = invoke(runner, ["train", str(shapes / "train"), "--epochs", "2", "--output", "plain", "--cache", "off",
                            *EXACT, *FAST_TRAIN])
    assert plain.exit_code == 0, plain.output
    assert "cache:" not in plain.stderr
    assert len(opened) == 2 * 22  # every image, every epoch
    assert losses(Path("cached")) == losses(Path("plain"))  # bit for bit: the same pixels and the same crops


def test_loader_processes_share_the_cache(runner, shapes):
    args = ["train", str(shapes / "train"), "--epochs", "1", "--cache", "ram", *EXACT, *FAST_TRAIN]
    in_process = invoke(runner, [*args, "--output", "zero"])
    assert in_process.exit_code == 0, in_process.output
    two_workers = invoke(runner, [*args, "--output", "two", "--workers", "2"])  # the later --workers wins
    assert two_workers.exit_code == 0, two_workers.output
    assert losses(Path("zero")) == losses(Path("two"))


def test_auto_decodes_nothing_ahead_when_the_images_do_not_fit_and_reads_the_files(runner, shapes, monkeypatch):
    monkeypatch.setattr(cachemod, "available_memory", lambda: 100_000)  # half of it holds 2 of the 17 kB images
    opened = count_file_reads(monkeypatch)
    decoded_ahead = []
    monkeypatch.setattr(ImageCache, "load", lambda self, path: decoded_ahead.append(path))
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", *EXACT, *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    # 49 kB allowed, 17 kB an image (from the headers' sizes: 3 x 67 x 89 bytes each at --image-size 67)
    assert "cache: not used, the 22 decoded images would take 372 kB, more than the 49 kB allowed (half the free " \
        "memory); each epoch decodes the files (--cache ram insists)" in result.stderr
    assert decoded_ahead == []  # decided before decoding any
    assert len(opened) == 22


def test_cache_ram_refuses_what_memory_cannot_hold(runner, shapes, monkeypatch):
    monkeypatch.setattr(cachemod, "available_memory", lambda: 100_000)
    result = invoke(runner, ["train", str(shapes / "train"), "--cache", "ram", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 2
    assert one_error_line(result) == ("error: --cache ram: the 22 decoded images would take 372 kB, and only 98 kB "
                                      "of memory is free; use --cache auto (cache when they fit) or --cache off")
    assert not Path("run").exists()  # refused before the run folder was made


def test_unknown_cache_mode(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--cache", "disk", *FAST_TRAIN])
    assert result.exit_code == 2
    assert one_error_line(result) == "error: unknown --cache 'disk': choose one of auto, ram, off"


def test_images_across_blocks_come_back_exactly(monkeypatch):
    monkeypatch.setattr(ImageCache, "BLOCK_BYTES", 1000)
    cache = ImageCache(Preprocess.for_arch(67, 227), "ram")
    generator = torch.Generator().manual_seed(0)
    images = {f"img{i}": torch.randint(0, 256, (3, 10 + i, 9), dtype=torch.uint8, generator=generator)
              for i in range(12)}
    images["big"] = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=generator)  # > one block
    for path, pixels in images.items():
        cache.add(path, pixels)
    assert len(cache.blocks) > 3 and cache.used == sum(p.numel() for p in images.values())
    for path, pixels in images.items():
        assert torch.equal(cache.get(path), pixels)
    assert cache.get("never added") is None


def test_cached_pixels_are_what_the_file_path_gives(shapes):
    """The cache holds decode_transforms' output; the augment half then gives what the whole transform gives."""
    from alexnet_cli.data.augment import Augmentation
    from alexnet_cli.data.images import open_image
    from alexnet_cli.data.preprocess import Chain

    preprocess = Preprocess.for_arch(67, 227)
    cache = ImageCache(preprocess, "ram")
    path = str(shapes / "train" / "circle" / "circle_0001.png")
    cache.add(path, cache.load(path))
    for seed in range(4):
        for on_device in (False, True):
            torch.manual_seed(seed)
            crop = Augmentation().train_crop(preprocess, on_device)
            from_file = Chain(preprocess.decode_transforms(), crop)(open_image(path, preprocess.resize_size))
            torch.manual_seed(seed)
            from_cache = crop(cache.get(path))
            if on_device:
                assert from_file.flip == from_cache.flip
                from_file, from_cache = from_file.pixels, from_cache.pixels
            assert torch.equal(from_file, from_cache)


def test_a_bomb_is_refused_even_with_warnings_silenced(tmp_path):
    """The parallel scan cannot rely on per-call warning filters, so the pixel limit is checked directly."""
    from PIL import Image

    Image.new("1", (10_000, 9_000)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnreadableImage, match="decompression bomb"):
            images.open_image_in_scope(tmp_path / "bomb.png", None)
