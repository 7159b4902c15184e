"""The words each option accepts, and the one check of each: read by the settings (settings.py) when a
command starts, and by the core where it resolves them. Nothing here imports torch, so `alexnet --help`
and a wrong option cost no more than Python's own start."""

from __future__ import annotations

import re

from alexnet_cli.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")
AUGMENT_POLICIES = ("flip", "trivial", "randaugment", "autoaugment", "augmix", "none")
CACHE_MODES = ("auto", "ram", "off")
TTA_MODES = ("none", "flip", "ten-crop")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    """One line naming the option, the value and what it takes, for a value outside `choices`."""
    if value not in choices:
        raise ConfigError(f"unknown {option} {value!r}: choose one of {', '.join(choices)}")


def check_device_name(name: str) -> None:
    """Reject a malformed `--device` before anything heavy is imported."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def check_precision_name(name: str) -> None:
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}: use {', '.join(PRECISIONS)}")


def check_tta(mode: str) -> None:
    check_choice("--tta", mode, TTA_MODES)
