"""The shape of the package, as docs/development.md draws it: imports point one way, only the CLI knows
Typer and the console, and no module grows past a size a newcomer reads in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_cli"
MAX_MODULE_LINES = 450  # "no module over about 400 lines"


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The modules `path` imports; with `top_level_only`, those it imports when it is itself imported."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_cli_knows_typer_and_the_console():
    for name, path in _modules().items():
        if name == "alexnet_cli.cli" or name.startswith("alexnet_cli.cli.") or name == "alexnet_cli.__main__":
            continue
        imported = _imports(path, top_level_only=False)
        assert "typer" not in imported and not any(i.startswith("typer.") for i in imported), name
        assert "alexnet_cli.console" not in imported, f"{name} draws: report to an Observer instead"


def test_module_imports_form_no_cycle():
    modules = _modules()
    graph = {name: {i for i in _imports(path, top_level_only=True) if i in modules and i != name}
             for name, path in modules.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(name):] + [name])
        if name in done:
            return
        visiting.append(name)
        for target in graph[name]:
            visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_modules_stay_small_and_are_all_in_the_layout():
    layout = (PACKAGE.parent / "docs" / "development.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it along what it holds"
        if name not in ("alexnet_cli", "alexnet_cli.__main__"):
            filename = str(path.relative_to(PACKAGE)).replace("\\", "/")
            assert f"`{filename}`" in layout, f"{filename} is missing from docs/development.md's layout"


def test_every_subpackage_is_installed():
    """pip install . (not -e) must carry alexnet_cli.training too: pyproject's package list covers them all."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (name for name, path in _modules().items() if path.name == "__init__.py"):
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), package
