"""Named recipes (`alexnet train --recipe NAME`): each is a set of explicit training settings.

A recipe fills in the settings the command line did not give; flags given on the command line win, and what a
recipe implies follows them (its warm-up shortens to leave at least one epoch after it). The run
prints what the recipe expanded to, and config.json records the settings themselves beside the recipe's
name. docs/training.md has each recipe's measured results.
"""

from __future__ import annotations

from typing import Any

from alexnet_cli.errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    # The write-up's train.py: Adam at 1e-3, batch 32, 10 epochs, a centre crop and nothing else.
    "seed": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=10, scheduler="none",
                 warmup_epochs=0, augment="none", random_erasing=0.0, pca_lighting=0.0, label_smoothing=0.0,
                 mixup=0.0, cutmix=0.0, ema=0.0, dropout=0.5),
    # Krizhevsky et al. 2012: SGD with momentum 0.9 at 0.01, weight decay 5e-4, batch 128, the rate divided by
    # 10 three times, random crops and flips, PCA lighting with sigma 0.1, dropout 0.5.
    # 10 epochs, as measured (the paper's 90 would take hours on a CPU).
    "paper": dict(optimizer="sgd", lr=0.01, weight_decay=5e-4, batch_size=128, epochs=10, scheduler="step",
                  warmup_epochs=0, augment="flip", random_erasing=0.0, pca_lighting=0.1, label_smoothing=0.0,
                  mixup=0.0, cutmix=0.0, ema=0.0, dropout=0.5),
    # What timm, torchvision's reference and Ultralytics train with now: AdamW with a warm-up then cosine, random
    # erasing, label smoothing and an EMA of the weights, at batch 128 for 28 epochs (on a CPU the fixed cost
    # of a step makes large batches cheap). Crop and flip rather than TrivialAugment, and lr 4e-4 with EMA
    # 0.995: what reached most on Fashion-MNIST's validation split (docs/training.md has the runs).
    "modern": dict(optimizer="adamw", lr=4e-4, weight_decay=0.05, batch_size=128, epochs=28, scheduler="cosine",
                   warmup_epochs=1, augment="flip", random_erasing=0.25, pca_lighting=0.0, label_smoothing=0.1,
                   mixup=0.0, cutmix=0.0, ema=0.995, dropout=0.5),
}


def expand(name: str | None, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the settings to train with, what the recipe set): the recipe's settings under those `given` on the
    command line."""
    if name is None:
        return dict(given), {}
    if name not in RECIPES:
        raise ConfigError(f"unknown --recipe {name!r}: choose one of {', '.join(RECIPES)}")
    from_recipe = {key: value for key, value in RECIPES[name].items() if key not in given}
    epochs = given.get("epochs") or from_recipe.get("epochs")
    if epochs and from_recipe.get("warmup_epochs", 0) >= epochs:  # the recipe's warm-up fits a shorter run
        from_recipe["warmup_epochs"] = epochs - 1
    return {**given, **from_recipe, "recipe": name}, from_recipe


def describe(name: str, from_recipe: dict[str, Any]) -> str:
    """One line: the recipe as the flags it stands for (those the command line overrode left out)."""
    flags = []
    for key, value in from_recipe.items():
        flag = "--" + key.replace("_", "-")
        flags.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return f"recipe {name}: {' '.join(flags)}" if flags else f"recipe {name}: every setting given on the command line"
