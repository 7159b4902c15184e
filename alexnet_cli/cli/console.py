"""Where everything the tool shows goes: human output to stderr through Rich, machine output (--json, --csv) to
stdout as UTF-8. The tables are tables.py's, a run's progress progress.py's; the core never draws."""

from __future__ import annotations

import codecs
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

# stderr=True is resolved at write time, so a test runner that swaps sys.stderr still captures it.
console = Console(stderr=True, highlight=False)


def _rank_prefix() -> str:
    """Under torchrun every rank may fail on its own; say which one did."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '0')} of {world}: " if world.isdigit() and int(world) > 1 else ""


def error(message: str) -> None:
    # soft_wrap: the message stays one line however narrow the terminal.
    console.print(f"[bold red]error:[/] {escape(_rank_prefix() + message)}", soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    console.print(escape(message), soft_wrap=True)


def write_stdout(text: str) -> None:
    """Machine output (--json, --csv) as UTF-8 on every OS. A Windows stdout that is redirected to a file
    encodes in the ANSI code page (cp1252 in the west), which cannot write most non-ASCII paths or labels,
    and scripts reading the output expect UTF-8 anyway."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    try:
        utf8 = codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name == "utf-8"
    except LookupError:
        utf8 = False
    if utf8 or buffer is None:
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # whatever the text layer holds goes first
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def print_json(data: Any) -> None:
    """JSON with non-ASCII kept readable (café, not caf\\u00e9), as UTF-8."""
    write_stdout(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
