"""The CLI reference in docs/ is generated from the Typer app; this fails when it is out of date."""

import re
import subprocess
import sys

import pytest
from support.helpers import ROOT, invoke

REGENERATE = [sys.executable, "-m", "typer", "alexnet_cli.cli", "utils", "docs", "--name", "alexnet",
              "--title", "CLI reference"]


def test_cli_reference_is_up_to_date(tmp_path):
    fresh = tmp_path / "cli.md"
    subprocess.run([*REGENERATE, "--output", str(fresh)], check=True, capture_output=True, cwd=ROOT)
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert fresh.read_text() == committed, (
        "docs/cli.md is out of date: regenerate it with\n  " + " ".join(REGENERATE[1:]) + " --output docs/cli.md"
    )


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "summary", "check", "export", "demo"])
def test_every_option_of_every_command_is_documented(runner, command):
    reference = (ROOT / "docs" / "cli.md").read_text()
    section = reference.split(f"## `alexnet {command}`", 1)[1].split("\n## ", 1)[0]
    help_text = invoke(runner, [command, "--help"]).output
    options = set(re.findall(r"--[a-z][a-z0-9-]*[a-z0-9]", help_text)) - {"--help"}
    assert options, help_text
    for option in options:
        assert f"`{option}" in section, f"{option} of `alexnet {command}` is missing from docs/cli.md"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-")


def test_readme_links_point_to_files():
    readme = (ROOT / "README.md").read_text()
    for target in [part.split(")", 1)[0] for part in readme.split("](")[1:]]:
        if not target.startswith("http"):
            path, _, anchor = target.partition("#")
            assert (ROOT / path).exists(), target
            if anchor:  # a heading of that file
                headings = [line.lstrip("#") for line in (ROOT / path).read_text().splitlines() if line.startswith("#")]
                assert anchor in {_slug(h) for h in headings}, target


def _keys(value, path=""):
    """Every key path of a JSON value: top-level keys, and those of the objects in its lists."""
    if isinstance(value, dict):
        return {f"{path}{key}" for key in value} | {k for key, v in value.items() for k in _keys(v, f"{path}{key}.")}
    if isinstance(value, list):
        return set().union(*(_keys(item, path) for item in value)) if value else set()
    return set()


def test_evaluation_md_shows_the_json_keys_evaluate_writes():
    """docs/evaluation.md's --json example holds exactly the keys that `alexnet evaluate --json` writes, for a
    model of 3 classes (so top-5 is null, as there)."""
    import json

    from alexnet_cli.inference.evaluate import EvalResult

    page = (ROOT / "docs" / "evaluation.md").read_text()
    example = json.loads(page.split("## `--json`", 1)[1].split("```json\n", 1)[1].split("```", 1)[0])
    result = EvalResult(class_names=("circle", "square", "triangle"), images=18, loss=1.1,
                        confusion=[[0, 0, 6], [0, 0, 6], [0, 0, 6]], k=5, topk_correct=None)
    written = json.loads(json.dumps(result.to_dict()))
    assert _keys(example) == _keys(written)
    assert example["confusion_matrix"] == written["confusion_matrix"] and example["images"] == written["images"]
    assert example["most_confused"] == written["most_confused"]


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_lines_that_need_neither_python_nor_a_pip_that_installs_into_the_system():
    """Debian 12 and Ubuntu 24.04 have no `python` command, and their pip refuses the system Python (PEP 668):
    both lines make a virtual environment with `python3` and its pip, and run what they installed from it.
    .ci/run runs the test line verbatim; .ci/quickstart-pep668 runs both in a shell that enforces PEP 668."""
    lines = _quick_start()
    assert len(lines) == 2, lines
    for line in lines:
        commands = [part.split()[0] for part in line.split("&&")]
        assert not {"python", "pip", "alexnet"} & set(commands), line  # python3, and what .venv/bin holds
        assert line.startswith("python3 -m venv --without-pip") and "python3 -m pip --python .venv/bin/python" in line
    assert lines[0].endswith(".venv/bin/alexnet demo") and lines[1].endswith(".venv/bin/python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci.splitlines()
    assert "_quick_start" not in ci and (ROOT / ".ci" / "quickstart-pep668").is_file()
