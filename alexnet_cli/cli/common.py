"""What every command module of the CLI shares: the Typer app, the help texts built from config.py's
defaults, the boundary that turns the core's errors into one line and an exit code, and how the options
given on the command line combine with a --recipe."""

from __future__ import annotations

import os
from contextlib import contextmanager

import typer

from alexnet_cli import console
from alexnet_cli.config import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, SGD_MOMENTUM
from alexnet_cli.errors import AlexNetError, ConfigError, DeviceError
from alexnet_cli.models import ARCHITECTURES, SMALL_IMAGE_SIDE, SMALL_INPUT

app = typer.Typer(
    name="alexnet",
    help="Train, evaluate and use AlexNet on your own image folders.",
    no_args_is_help=True,
    # Rich markup in help strings: a literal bracket is written \\[ (see TENSORBOARD_HELP). Defaults that depend
    # on other options are shown through show_default, so Typer prints them as it prints every other default.
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

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


@contextmanager
def _boundary():
    """Turn the core's errors into one line and an exit code; never a traceback (unless ALEXNET_DEBUG=1)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except AlexNetError as exc:
        console.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            console.error("out of GPU memory: try a smaller --batch-size")
            raise typer.Exit(DeviceError.exit_code) from None
        if os.environ.get("ALEXNET_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        console.error(f"unexpected {type(exc).__name__}: {first} (set ALEXNET_DEBUG=1 for the traceback)")
        raise typer.Exit(1) from None


def _learning_rate(value: str | None) -> float | None:
    if value is None or value == "find":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--lr is a number such as 3e-4, or find; got {value!r}") from None


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line (or the environment) gave this option, rather than its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _with_recipe(ctx: typer.Context, config_class, options: dict, recipe: str | None):
    """The config from the options, with the recipe's settings where the command line gave none (a flag left
    at its default is not given). Returns (config, what the recipe set)."""
    from alexnet_cli.recipes import expand

    fields = config_class.__dataclass_fields__
    given = {name: value for name, value in options.items()
             if name in fields and name != "lr_find" and (name == "arch" or _given(ctx, name))}
    given["lr_find"] = options["lr_find"]
    if options.get("lr") is not None or options["lr_find"]:
        given["lr"] = options["lr"]
    settings, from_recipe = expand(recipe, given)
    return config_class(**settings), from_recipe
