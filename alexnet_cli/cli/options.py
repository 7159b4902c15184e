"""The help texts and shown defaults the commands share, written from the constants that decide them
(config/settings.py's defaults, the architectures' sizes), so that no default is restated by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alexnet_cli.cli import console
from alexnet_cli.config.recipes import RECIPES
from alexnet_cli.config.settings import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, SGD_MOMENTUM
from alexnet_cli.errors import ConfigError
from alexnet_cli.models.registry import ARCHITECTURES, SMALL_IMAGE_SIDE, SMALL_INPUT

ARCH_HELP = "Architecture: alexnet (the write-up's), alexnet-paper (2012, LRN + groups) or alexnet-torchvision."
CACHE_HELP = ("Decode the images once before the first step and keep them in memory: auto (when they fit in "
              "half the free memory), ram (insist) or off.")
STRICT_HELP = "Stop at the first unreadable or skipped file instead of warning and going on."
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps. auto picks CUDA, then MPS, then the CPU."
TENSORBOARD_HELP = "Log to RUN_DIR/tensorboard (pip install 'alexnet-cli\\[tensorboard]')."
# The defaults that depend on something else, written from the constants that decide them.
WORKERS_DEFAULT = "0 on 2 cores or fewer, else cores - 1, at most 4"


def _number(value: float) -> str:
    """1e-4, 5e-4, 0.01, 0.9: as people write them."""
    return f"{value:.0e}".replace("e-0", "e-") if 0 < value < 1e-3 else f"{value:g}"


LR_DEFAULT = ", ".join(f"{_number(lr)} for {name}" for name, lr in DEFAULT_LR.items())
WEIGHT_DECAY_DEFAULT = ", ".join(f"{_number(decay)} for {name}" for name, decay in DEFAULT_WEIGHT_DECAY.items())
OPTIMIZER_HELP = (f"adam, adamw (decoupled weight decay), or sgd (momentum {_number(SGD_MOMENTUM)}, weight decay "
                  f"{_number(DEFAULT_WEIGHT_DECAY['sgd'])}).")
ARCH_SIZE_DEFAULT = "the arch's own: " + ", ".join(f"{name} {info.default_image_size}"
                                                   for name, info in ARCHITECTURES.items())
IMAGE_SIZE_DEFAULT = f"{ARCH_SIZE_DEFAULT}; {SMALL_INPUT} for images of {SMALL_IMAGE_SIDE} pixels or less"
FRAME_HELP = ("How each image fills the input. crop: the paper's random crop of the image resized about 1.13 "
              "times larger, and its centre crop to evaluate; full: the whole image, shifted within a black "
              "border to train.")
FRAME_DEFAULT = f"full for images of {SMALL_IMAGE_SIDE} pixels or less, else crop"
SIBLING_VAL_DEFAULT = "a sibling val/ or test/ folder"
NEWEST_BEST_DEFAULT = "the newest runs/*/best.pt"
PRECISION_HELP = (
    "auto, fp32, bf16 or fp16. auto: bf16 (or fp16) mixed precision on CUDA; bf16 on a CPU only where it "
    "measures faster than fp32; says what it chose."
)
RECIPE_HELP = ("Named settings: " + ", ".join(RECIPES) + " (docs/training.md). Options given on the command "
               "line override it.")
AUGMENT_HELP = ("flip (random crop + flip), trivial (TrivialAugment), randaugment, autoaugment, augmix (each "
                "with crop + flip), or none (the centre crop alone).")
PCA_HELP = "The paper's PCA colour augmentation, with the training set's own RGB eigenvectors: its sigma (0: off)."
EMA_HELP = "Validate and save an exponential moving average of the weights with this decay, such as 0.999."
TTA_HELP = ("Test-time augmentation: none, flip (the image and its mirror) or ten-crop (the paper's corners, "
            "centre and mirrors); the probabilities are averaged.")
# Why the batch defaults differ (train 64, evaluate and predict 32), said in --help.
TRAIN_BATCH_HELP = ("Images per step. 64: the default rate was measured at it, and on a CPU a larger batch "
                    "spreads each step's fixed cost (docs/training.md).")
INFER_BATCH_HELP = ("Images per forward pass. 32, half of train's: less memory where the model runs beside other "
                    "work, and the results do not depend on it (raise it for speed on a GPU).")
CLASS_WEIGHTS_HELP = "none, auto (inverse class frequency) or a power of it, such as 0.5, for the loss."

# The options several commands share, each written once: `workers: WorkersOption = None`.
CheckpointOption = Annotated[Path | None, typer.Option(help="Checkpoint.", show_default=NEWEST_BEST_DEFAULT)]
# export and serve took the checkpoint as an argument before 0.3.0: it still works, with a note (checkpoint()).
OldCheckpointArgument = Annotated[Path | None, typer.Argument(
    help="The checkpoint as an argument, the spelling before 0.3.0: prefer --weights.", show_default=False)]
WorkersOption = Annotated[int | None, typer.Option(help="Data-loading processes.", show_default=WORKERS_DEFAULT)]
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
NoCudaOption = Annotated[bool, typer.Option("--no-cuda", help="Never use CUDA.")]
PrecisionOption = Annotated[str, typer.Option(help=PRECISION_HELP)]
StrictOption = Annotated[bool, typer.Option("--strict", help=STRICT_HELP)]


def checkpoint(argument: Path | None, option: Path | None) -> Path | None:
    """The checkpoint given as --weights (every command's spelling) or, as before 0.3.0, as an argument of
    export and serve: that still works, with a note."""
    if argument is not None and option is not None:
        raise ConfigError("give the checkpoint once: --weights CKPT")
    if argument is not None:
        console.warn(f"the checkpoint as an argument is the spelling before 0.3.0: every command takes "
                     f"--weights {argument}")
    return option if option is not None else argument
