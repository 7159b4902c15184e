"""The config group: option vocabularies, the settings dataclasses and the recipes, checked without torch and
without the CLI (the CLI's own tests drive the same checks through the command line)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_cli.config import vocabulary
from alexnet_cli.config.recipes import RECIPES, describe, expand
from alexnet_cli.config.settings import DEFAULT_EPOCHS, DemoConfig, PredictConfig, ServeConfig, TrainConfig
from alexnet_cli.errors import ConfigError


@pytest.mark.parametrize("option, choices", [
    ("--augment", vocabulary.AUGMENT_POLICIES), ("--cache", vocabulary.CACHE_MODES), ("--tta", vocabulary.TTA_MODES),
    ("scheduler", vocabulary.SCHEDULERS),
])
def test_a_word_outside_its_vocabulary_is_one_line_naming_every_choice(option, choices):
    for word in choices:
        vocabulary.check_choice(option, word, choices)
    with pytest.raises(ConfigError) as refused:
        vocabulary.check_choice(option, "nonsense", choices)
    assert str(refused.value) == f"unknown {option} 'nonsense': choose one of {', '.join(choices)}"


@pytest.mark.parametrize("name, ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:3", True),
                                      ("mps", True), ("gpu", False), ("cuda:", False), ("cuda:x", False)])
def test_device_names(name, ok):
    if ok:
        vocabulary.check_device_name(name)
    else:
        with pytest.raises(ConfigError, match="use auto, cpu, cuda, cuda:N or mps"):
            vocabulary.check_device_name(name)


def test_settings_are_frozen_and_checked_once_when_made():
    cfg = TrainConfig(data=Path("data"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    for bad, message in ((dict(warmup_epochs=DEFAULT_EPOCHS), "leaves no epoch after the warm-up"),
                         (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
                         (dict(val=Path("v"), val_split=0.2), "give --val or --val-split, not both"),
                         (dict(freeze_features=True), "use it with --pretrained")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(data=Path("data"), **bad)
    with pytest.raises(ConfigError, match="must hold at least one batch"):
        ServeConfig(max_batch=64, max_queue=32)
    with pytest.raises(ConfigError, match="drop --tta"):
        PredictConfig(inputs=("a.jpg",), explain=Path("cams"), tta="flip")


def test_the_resolved_settings_are_plain_values():
    """config.json and every checkpoint store this dict: plain values, the defaults that depend on the
    optimizer resolved."""
    data = TrainConfig(data=Path("data"), optimizer="sgd").to_dict()
    assert data["data"] == "data" and data["lr"] == 0.01 and data["weight_decay"] == 5e-4
    assert all(isinstance(value, (str, int, float, bool, type(None))) for value in data.values())


def test_a_recipe_fills_what_the_command_line_left_out():
    settings, from_recipe = expand("paper", {"epochs": 3, "data": "d"})
    assert settings["epochs"] == 3 and settings["optimizer"] == "sgd" and settings["recipe"] == "paper"
    assert "epochs" not in from_recipe and from_recipe["lr"] == RECIPES["paper"]["lr"]
    assert describe("paper", {"lr": 0.01, "optimizer": "sgd"}) == "recipe paper: --lr 0.01 --optimizer sgd"
    assert expand(None, {"epochs": 3}) == ({"epochs": 3}, {})
    with pytest.raises(ConfigError, match="unknown --recipe 'fancy'"):
        expand("fancy", {})


def test_every_recipe_names_only_real_settings():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, settings in RECIPES.items():
        assert set(settings) <= fields, name
        TrainConfig(data=Path("data"), **settings)  # and passes the checks


def test_the_demo_defaults_live_in_the_settings():
    from alexnet_cli.data.sources import demo

    assert demo.ensure_demo_data.__kwdefaults__["per_class"] == DemoConfig.per_class
    assert DemoConfig.image_size >= 67  # the smallest input alexnet takes


def test_the_config_group_imports_no_torch():
    """`alexnet --help` reads these modules for its defaults: they must stay light."""
    code = ("import sys\nimport alexnet_cli.config.settings, alexnet_cli.config.recipes, alexnet_cli.models.registry\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
