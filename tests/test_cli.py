import subprocess
import sys

import pytest

from alexnet_cli import __version__
from conftest import invoke


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
    import alexnet_cli.summary

    def boom(*args, **kwargs):
        raise ZeroDivisionError("deep inside")

    monkeypatch.setattr(alexnet_cli.summary, "summarize", boom)
    result = runner.invoke(__import__("alexnet_cli.cli").cli.app, ["summary"])
    assert result.exit_code == 1
    assert "unexpected ZeroDivisionError: deep inside" in result.stderr
    assert "Traceback" not in result.output
