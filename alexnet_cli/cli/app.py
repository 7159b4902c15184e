"""The Typer app itself, `--version`, the boundary that turns the core's errors into one line and an exit code,
and how the options given on the command line combine with a --recipe. The commands are registered on it in
cli/__init__.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer

from alexnet_cli import __version__
from alexnet_cli.cli import console
from alexnet_cli.config.recipes import expand
from alexnet_cli.errors import AlexNetError, ConfigError, DeviceError, OutputError, first_line

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


@contextmanager
def boundary() -> Iterator[None]:
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
    except OSError as exc:
        if os.environ.get("ALEXNET_DEBUG") or exc.errno not in OUTPUT_ERRNOS:
            _unexpected(exc)
        console.error(f"cannot use {exc.filename or 'a file'}: {exc.strerror}")
        raise typer.Exit(OutputError.exit_code) from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            console.error("out of GPU memory: try a smaller --batch-size")
            raise typer.Exit(DeviceError.exit_code) from None
        _unexpected(exc)


# Errors of the filesystem that are the user's place, not a bug: one line with exit code 7 (most are caught
# earlier, by runtime.files.check_writable, before any data work).
OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _unexpected(exc: Exception) -> NoReturn:
    if os.environ.get("ALEXNET_DEBUG"):
        raise exc
    console.error(f"unexpected {type(exc).__name__}: {first_line(exc)} (set ALEXNET_DEBUG=1 for the traceback)")
    raise typer.Exit(1) from None


def learning_rate(value: str | None) -> float | None:
    if value is None or value == "find":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--lr is a number such as 3e-4, or find; got {value!r}") from None


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line (or the environment) gave this option, rather than its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def with_recipe(ctx: typer.Context, config_class: Any, options: dict[str, Any], recipe: str | None
                ) -> tuple[Any, dict[str, Any]]:
    """The config from the options, with the recipe's settings where the command line gave none (a flag left
    at its default is not given). Returns (config, what the recipe set)."""
    fields = config_class.__dataclass_fields__
    chosen = {name: value for name, value in options.items()
              if name in fields and name != "lr_find" and (name == "arch" or given(ctx, name))}
    chosen["lr_find"] = options["lr_find"]
    if options.get("lr") is not None or options["lr_find"]:
        chosen["lr"] = options["lr"]
    settings, from_recipe = expand(recipe, chosen)
    return config_class(**settings), from_recipe


def _version(value: bool) -> None:
    if value:
        typer.echo(f"alexnet-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate and use AlexNet on your own image folders."""
