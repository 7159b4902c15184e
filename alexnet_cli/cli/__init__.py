"""The `alexnet` command: the Typer app (common.py), its commands (main.py), `serve` (serve.py) and the `data`
group (data.py).

Each command translates its options into a config, calls one core function and renders the result.
"""

from __future__ import annotations

from alexnet_cli.cli.common import app
from alexnet_cli.cli.data import data_app
from alexnet_cli.cli.main import main
from alexnet_cli.cli.serve import serve

app.add_typer(data_app, name="data")

__all__ = ["app", "main", "serve"]
