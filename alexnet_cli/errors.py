"""One family of errors. Each carries a message a user understands and the exit code the CLI returns.

The core raises these; only the CLI turns them into a red line and an exit code (see docs/exit-codes.md).
"""

from __future__ import annotations

import importlib.util


class AlexNetError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class ConfigError(AlexNetError):
    """An impossible option or combination of options."""

    exit_code = 2


class DataError(AlexNetError):
    """A missing, empty or malformed data folder, or an unreadable image where one is required."""

    exit_code = 3


class CheckpointError(AlexNetError):
    """A checkpoint that is missing, not ours, unsafe, or does not match the request."""

    exit_code = 4


class DeviceError(AlexNetError):
    """A device that was asked for and is not there, or that ran out of memory."""

    exit_code = 5


class NonFiniteLossError(AlexNetError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""

    exit_code = 6


class OutputError(AlexNetError):
    """A place to write that cannot be written: a read-only folder or filesystem, a file where a folder must
    be, a full disk."""

    exit_code = 7


class GateRefused(AlexNetError):
    """A model that a gate refused to write: an int8 model that lost more accuracy than --max-drop, or gained
    less speed than --min-speedup. Nothing was written."""

    exit_code = 8


class MissingExtra(ConfigError):
    """A feature whose packages come with an optional extra that is not installed. The message names the
    install line: `pip install 'alexnet-cli[EXTRA]'`."""

    def __init__(self, needs: str, extra: str, missing: str | None = None, then: str = "") -> None:
        detail = f" ({missing} is not installed)" if missing else ""
        super().__init__(f"{needs}{detail}: pip install 'alexnet-cli[{extra}]'{then}")
        self.extra = extra


def require_extra(needs: str, extra: str, modules: tuple[str, ...], then: str = "") -> None:
    """MissingExtra naming the first of `modules` that cannot be imported; nothing when all of them can."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(needs, extra, module, then)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's errors run to pages), or its class's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
