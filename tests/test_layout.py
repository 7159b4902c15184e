"""The shape of the package, as docs/development.md draws it: groups that import only the groups below them,
no import cycle, only the CLI knows Typer and the console, and no file, function or parameter list grows past
what a newcomer reads in one sitting. Every import counts: module-level, inside functions, and for types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_cli"
# The groups, lowest first: a module may import its own group, the groups before it, and the shared modules.
GROUPS = ("models", "config", "runtime", "data", "artifacts", "inference", "reporting", "training", "serving", "cli")
SHARED = ("alexnet_cli", "alexnet_cli.errors", "alexnet_cli.observer")  # what every layer may import
MAX_FILE_LINES = 400
MAX_BODY_LINES = 60
MAX_PARAMETERS = 8  # outside the Typer commands, whose parameters are the command line's options


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in GROUPS else None


def test_the_root_holds_at_most_four_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 4, sorted(p.name for p in PACKAGE.glob("*.py"))


def test_every_module_belongs_to_a_group_or_is_shared():
    for name in MODULES:
        assert name in SHARED or name == "alexnet_cli.__main__" or _group(name) is not None, name


def _upward(module: str, path: Path) -> list[str]:
    """What `module` (at `path`) imports from a group above its own."""
    rank = GROUPS.index(_group(module))
    return [f"{module} imports {target}: {_group(target)}/ sits above {_group(module)}/ (docs/development.md)"
            for target in sorted(_imports(path)) if _group(target) and GROUPS.index(_group(target)) > rank]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _group(m)))
def test_groups_import_only_the_groups_below_them(module):
    assert _upward(module, MODULES[module]) == []


def test_no_import_cycle():
    graph = {name: {i for i in _imports(path) if i != name and not name.startswith(i + ".")}
             for name, path in MODULES.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(name):] + [name])
        if name in done:
            return
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_the_checker_finds_an_upward_import_inside_a_function_or_for_types(tmp_path):
    """The rule above, on modules that break it: data/ importing training/ inside a function, and under
    TYPE_CHECKING; and one that keeps it."""
    inside = tmp_path / "inside.py"
    inside.write_text("def f():\n    from alexnet_cli.training import train\n")
    for_types = tmp_path / "types.py"
    for_types.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from alexnet_cli.cli import app\n")
    fine = tmp_path / "fine.py"
    fine.write_text("from alexnet_cli.runtime.seeds import sample_seed\nfrom alexnet_cli.errors import DataError\n")
    assert _upward("alexnet_cli.data.folders", inside)  # alexnet_cli.training, and its train
    assert _upward("alexnet_cli.data.folders", for_types)
    assert _upward("alexnet_cli.data.folders", fine) == []


def test_only_the_cli_knows_typer_and_the_console():
    for name, path in MODULES.items():
        if _group(name) == "cli" or name == "alexnet_cli.__main__":
            continue
        source = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(source) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(source) if isinstance(node, ast.ImportFrom)}
        assert not any(i == "typer" or i.startswith(("typer.", "rich")) for i in imported), name


def _functions():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_files_and_functions_stay_small():
    for name, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_FILE_LINES, f"{name} has {lines} lines: split it along what it holds"
    for name, node in _functions():
        body = node.end_lineno - node.body[0].lineno + 1
        assert body <= MAX_BODY_LINES, f"{name}.{node.name} has a body of {body} lines"


def test_no_long_parameter_lists_outside_the_commands():
    for name, node in _functions():
        if _group(name) == "cli":
            continue  # a Typer command's parameters are its options
        args = node.args
        count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
        count -= bool(args.args) and args.args[0].arg in ("self", "cls")
        assert count <= MAX_PARAMETERS, f"{name}.{node.name} takes {count} parameters: pass what holds them"


def test_the_layout_table_names_every_group():
    layout = (PACKAGE.parent / "docs" / "development.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for group in GROUPS:
        assert f"`{group}/`" in layout, f"{group}/ is missing from docs/development.md's layout table"


def test_every_subpackage_is_installed():
    """pip install . (not -e) must carry every subpackage: pyproject's package list covers them all."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (name for name, path in MODULES.items() if path.name == "__init__.py"):
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), package
