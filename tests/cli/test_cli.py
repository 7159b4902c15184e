import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import invoke

from alexnet_cli import __version__


def test_help_lists_the_commands(runner):
    result = invoke(runner, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "evaluate", "predict", "summary"):
        assert command in result.output


def test_version(runner):
    result = invoke(runner, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"alexnet-cli {__version__}"


def test_python_dash_m_runs_the_same_app():
    result = subprocess.run([sys.executable, "-m", "alexnet_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["summary", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from alexnet_cli.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unexpected_errors_are_one_line(runner, monkeypatch):
    import alexnet_cli.inference.describe

    def boom(*args, **kwargs):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(alexnet_cli.inference.describe, "summarize", boom)
    result = runner.invoke(__import__("alexnet_cli.cli").cli.app, ["summary"])
    assert result.exit_code == 1
    assert "unexpected ZeroDivisionError: deep inside" in result.stderr
    assert "Traceback" not in result.output


def _all_commands():
    import typer

    from alexnet_cli.cli import app

    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield [name, sub_name], sub
        if not getattr(command, "commands", None):
            yield [name], command


@pytest.mark.parametrize("words, command", list(_all_commands()), ids=lambda value: " ".join(value)
                         if isinstance(value, list) else "")
def test_help_shows_every_option_as_written_with_its_default(runner, monkeypatch, words, command):
    """Rich reads `[...]` in a help string as markup and drops it: every help text must come out as written,
    and every default (a value, or a described one such as --lr's) must be shown."""
    monkeypatch.setenv("COLUMNS", "400")  # one line per option, so that nothing wraps
    rendered = " ".join(invoke(runner, [*words, "--help"]).output.replace("│", " ").split())
    for param in command.params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        written = " ".join((param.help or "").replace("\\[", "[").split())
        assert written in rendered, f"{param.name}: {written!r} is not shown as written"
        if getattr(param, "is_flag", False):
            continue
        if isinstance(param.show_default, str):
            assert f"[default: ({param.show_default})]" in rendered, param.name
        elif param.default is not None:
            assert f"[default: {param.default}]" in rendered, param.name


def test_the_defaults_that_depend_on_other_options_are_shown(runner, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    rendered = " ".join(invoke(runner, ["train", "--help"]).output.split())
    for shown in ("adam, adamw (decoupled weight decay), or sgd (momentum 0.9, weight decay 5e-4).",
                  "[default: (2e-4 for adam, 2e-4 for adamw, 0.01 for sgd)]", "131 for images of 64 pixels or less",
                  "[default: (20, or the resumed run's own)]", "[default: (0 for adam, 0.01 for adamw, 5e-4 for sgd)]",
                  "pip install 'alexnet-cli[tensorboard]'",
                  "[default: (a new runs/train-N)]", "[default: (0 on 2 cores or fewer, else cores - 1, at most 4)]"):
        assert shown in rendered, shown


def test_shell_completion_is_offered(runner):
    help_text = invoke(runner, ["--help"]).output
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_the_version_is_recorded_with_every_run_and_the_changelog_names_it(runner, shapes):
    """__version__ moves with what changed (docs/CHANGELOG.md), and a run's config.json and checkpoints say
    which version made them."""
    import json

    import torch
    from support.helpers import FAST_TRAIN, ROOT

    changelog = (ROOT / "docs" / "CHANGELOG.md").read_text()
    newest = changelog.split("\n## ")[1].splitlines()[0]
    assert newest == __version__
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert json.loads(Path("run/config.json").read_text())["tool_version"] == __version__
    assert torch.load("run/last.pt", weights_only=True)["tool_version"] == __version__
