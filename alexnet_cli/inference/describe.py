"""What `alexnet summary` describes: an architecture as built, a checkpoint (its architecture, input size and
classes), or torchvision's ImageNet weights. The arithmetic itself is models/summary.py's."""

from __future__ import annotations

from typing import Any

from alexnet_cli.artifacts.checkpoint import load_checkpoint
from alexnet_cli.config.settings import SummaryConfig
from alexnet_cli.inference.predict import load_predictor
from alexnet_cli.models.registry import arch_info
from alexnet_cli.models.summary import summarize
from alexnet_cli.observer import SilentObserver


def describe(cfg: SummaryConfig) -> tuple[dict[str, Any], list[str] | None]:
    """`alexnet summary`: the summary of an architecture as built, of a checkpoint (its architecture, input
    size and classes, with frozen features marked), or of torchvision's ImageNet weights; and the class names
    where there are any."""
    frozen: frozenset[str] = frozenset()
    if cfg.weights is not None:
        checkpoint = load_checkpoint(cfg.weights)
        model = checkpoint.build()  # proves the weights fit the architecture they claim
        if checkpoint.training is not None and checkpoint.training.config.get("freeze_features"):
            frozen = frozenset(f"features.{name}" for name, _ in model.features.named_parameters())
        size = cfg.image_size or checkpoint.preprocess.image_size
        data = summarize(checkpoint.arch, checkpoint.num_classes, size, frozen)
        return data, list(checkpoint.class_names)
    if cfg.pretrained:
        predictor = load_predictor(None, True, SilentObserver())  # the weights themselves, fetched if need be
        size = cfg.image_size or predictor.preprocess.image_size
        return summarize("alexnet-torchvision", 1000, size), list(predictor.class_names)
    return summarize(cfg.arch, cfg.num_classes, cfg.image_size or arch_info(cfg.arch).default_image_size), None
