"""The `alexnet` command. Each command translates its options into a config, calls one core function and
renders the result; this file is their table of contents, in the order `alexnet --help` lists them.

    app.py        the Typer app, --version, the error boundary, --recipe under the options given
    options.py    help texts and shown defaults, written from the constants that decide them
    train.py      train, lr-find, plot
    inference.py  summary, evaluate, predict, export, benchmark
    demo.py       demo
    data.py       check, and the `data` group (pets, fashion-mnist, cifar10, imagenet)
    serve.py      serve
    console.py, tables.py, progress.py   the only code that draws: lines, tables, progress bars

torch is imported only inside the commands that need it, so that `alexnet --help` stays quick.
"""

from __future__ import annotations

from alexnet_cli.cli.app import app
from alexnet_cli.cli.data import check, data_app
from alexnet_cli.cli.demo import demo
from alexnet_cli.cli.inference import benchmark, evaluate, export, predict, summary
from alexnet_cli.cli.serve import serve
from alexnet_cli.cli.train import lr_find, plot, train

app.command()(summary)
app.command()(train)
app.command("lr-find")(lr_find)
app.command()(evaluate)
app.command()(predict)
app.command()(plot)
app.command()(demo)
app.command()(check)
app.command()(export)
app.command()(benchmark)
app.command()(serve)
app.add_typer(data_app, name="data")


def main() -> None:
    app()


__all__ = ["app", "main"]
