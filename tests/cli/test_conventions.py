"""One convention across commands: the checkpoint is `--weights` everywhere (export's and serve's old argument
still works, with a note), and defaults that differ between commands say why in --help."""

from __future__ import annotations

import shutil

import pytest
from support.helpers import invoke, one_error_line


@pytest.mark.parametrize("command", ["evaluate", "predict", "summary", "export", "serve"])
def test_every_command_that_reads_a_checkpoint_takes_weights(runner, command):
    result = invoke(runner, [command, "--help"])
    assert result.exit_code == 0 and "--weights" in result.stdout


def test_export_takes_weights_and_its_old_argument_with_a_note(runner, trained_run, tmp_path):
    best = trained_run / "best.pt"
    result = invoke(runner, ["export", "--weights", str(best), "--format", "torchscript", "--output", "a.pt"])
    assert result.exit_code == 0, result.output
    assert "spelling before 0.3.0" not in result.stderr and (tmp_path / "a.pt").is_file()

    result = invoke(runner, ["export", str(best), "--format", "torchscript", "--output", "b.pt"])
    assert result.exit_code == 0, result.output
    assert f"the checkpoint as an argument is the spelling before 0.3.0: every command takes --weights {best}" in \
        " ".join(result.stderr.split())
    assert (tmp_path / "b.pt").is_file()

    result = invoke(runner, ["export", str(best), "--weights", str(best)])
    assert result.exit_code == 2 and "give the checkpoint once: --weights CKPT" in one_error_line(result)


def test_export_without_a_checkpoint_takes_the_newest_run_as_the_others_do(runner, trained_run, tmp_path):
    (tmp_path / "runs" / "train-1").mkdir(parents=True)
    shutil.copyfile(trained_run / "best.pt", tmp_path / "runs" / "train-1" / "best.pt")
    result = invoke(runner, ["export", "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert "using the newest run's checkpoint: runs/train-1/best.pt" in result.stderr
    assert (tmp_path / "runs" / "train-1" / "best.pt").with_suffix(".pt").is_file()


@pytest.mark.parametrize("args", [["--weights", "CKPT"], ["CKPT"]])
def test_serve_takes_weights_and_its_old_argument(runner, trained_run, monkeypatch, args):
    pytest.importorskip("fastapi")
    from alexnet_cli.serving import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda cfg, observer: seen.setdefault("weights", cfg.weights))
    best = str(trained_run / "best.pt")
    result = invoke(runner, ["serve", *[best if arg == "CKPT" else arg for arg in args]])
    assert result.exit_code == 0, result.output
    assert str(seen["weights"]) == best
    assert ("spelling before 0.3.0" in result.stderr) == (args == ["CKPT"])


def _help(runner, command: str) -> str:
    """A command's --help as one line of words, without Rich's box."""
    return " ".join(invoke(runner, [command, "--help"]).stdout.replace("│", " ").split())


def test_batch_defaults_that_differ_say_why(runner):
    assert "64: the default rate was measured at it" in _help(runner, "train")
    assert "64: the default rate was measured at it" in _help(runner, "lr-find")
    for command in ("evaluate", "predict"):
        text = _help(runner, command)
        assert "32, half of train's" in text and "the results do not depend on it" in text


def test_lr_find_offers_the_runtime_options_of_train(runner):
    text = invoke(runner, ["lr-find", "--help"]).stdout
    for option in ("--pretrained", "--no-cuda", "--precision", "--workers", "--cache", "--device"):
        assert option in text, option
