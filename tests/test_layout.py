"""The floor plan holds: imports point down the layers, no module cycle, light package __init__ files."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hgsearch"
# Low to high (notes/ARCHITECTURE.md): a module may import its own layer or lower ones, never higher.
LAYERS = ["core", "store", "model", "data", "training", "search", "results", "cli"]
SUBPACKAGES = LAYERS[1:]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    top = module.split(".")[1] if module.count(".") else "core"
    if top == "__main__":  # `python -m hgsearch` is the command line
        return "cli"
    return top if top in SUBPACKAGES else "core"


def imports(path: Path) -> set[str]:
    """Every hgsearch module a file imports, at the top or inside a function (lazy imports count too).

    Imports under `if TYPE_CHECKING:` are left out: they never run, so they load no layer and make no
    cycle (events.py names ArchSpec in annotations only).
    """
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hgsearch")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hgsearch"):
            for a in node.names:  # `from hgsearch.store import schema` imports the module hgsearch.store.schema
                sub = f"{node.module}.{a.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file() else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({layer(m)}) imports {i} ({layer(i)})" for m, deps in g.items() for i in sorted(deps)
            if LAYERS.index(layer(i)) > LAYERS.index(layer(m))]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (a package's __init__ importing its own modules is not one)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for i in sorted(g.get(m, ())):
            if i == m or m.startswith(i + ".") or i not in g:  # a module's own package runs first, not a cycle
                continue
            if state.get(i) == "open":
                found.append([*path[path.index(i):], i])
            elif i not in state:
                visit(i, [*path, i])
        state[m] = "done"

    for m in g:
        if m not in state:
            visit(m, [m])
    return found


def test_imports_point_down_the_layers():
    assert upward(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    g = {"hgsearch.store.schema": {"hgsearch.search.run"}, "hgsearch.search.run": {"hgsearch.store.schema"}}
    assert upward(g) == ["hgsearch.store.schema (store) imports hgsearch.search.run (search)"]
    assert cycles(g) == [["hgsearch.store.schema", "hgsearch.search.run", "hgsearch.store.schema"]]


def test_package_inits_hold_a_docstring_and_plain_re_exports_only():
    """No machinery in an __init__ (a module __getattr__, functions): IDEs and type checkers see every name."""
    for path in sorted(PACKAGE.rglob("__init__.py")):
        body = ast.parse(path.read_text()).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), f"{path}: docstring"
        for node in body[1:]:
            dunder = isinstance(node, ast.Assign) and all(getattr(t, "id", "") in {"__all__", "__version__"}
                                                          for t in node.targets)
            assert isinstance(node, ast.Import | ast.ImportFrom) or dunder, (
                f"{path}:{node.lineno}: an __init__ holds its docstring and plain re-exports only")
        pkg = importlib.import_module(module_name(path))
        for name in getattr(pkg, "__all__", ()):
            assert getattr(pkg, name) is not None


PROBE = """
import sys
import {module}
heavy = {{"torch", "optuna", "sqlalchemy", "pandas", "matplotlib"}}
print(" ".join(sorted(m for m in sys.modules if m in heavy)
               + sorted(m for m in sys.modules if m.startswith("hgsearch.results"))))
"""


@pytest.mark.parametrize(("module", "not_loaded"), [
    ("hgsearch.config", {"torch", "optuna", "pandas", "matplotlib"}),
    ("hgsearch.search.run", {"pandas", "matplotlib"}),
    ("hgsearch.cli.progress", {"hgsearch.results", "torch", "pandas", "matplotlib"}),
])
def test_light_modules_stay_light(module, not_loaded):
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert not_loaded.isdisjoint(out), f"importing {module} loads {sorted(not_loaded & set(out))}"


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_importing_a_package_alone_loads_no_heavy_library(sub):
    """A package's __init__ runs before any of its modules: a heavy re-export there would load torch, Optuna or
    pandas with every module of the package (the CLI's startup imports hgsearch.store and hgsearch.cli)."""
    heavy = {"torch", "optuna", "sqlalchemy", "pandas", "matplotlib"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=f"hgsearch.{sub}")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert heavy.isdisjoint(out), f"importing hgsearch.{sub} loads {sorted(heavy & set(out))}"
