"""docs/commands.md's option tables are what tools/commands_doc.py writes from the commands' own --help."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "commands_doc.py"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("commands_doc", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_option_tables_are_current(tool):
    text = tool.DOC.read_text()
    assert tool.render(text) == text, (
        "docs/commands.md's option tables differ from --help: run .venv/bin/python tools/commands_doc.py")


def test_an_edited_row_is_drift_and_the_prose_around_the_tables_is_kept(tool):
    text = tool.DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--budget` |"))
    stale = text.replace(row, "| `--budget` | required | parameter budget |").replace(
        "## frontier", "## frontier\n\nA hand-written line.")
    assert tool.render(stale) == text.replace("## frontier", "## frontier\n\nA hand-written line.")


def test_a_command_without_a_table_is_refused(tool):
    text = tool.DOC.read_text()
    start = text.index("<!-- options: show ")
    end = text.index("<!-- end options -->", start) + len("<!-- end options -->")
    with pytest.raises(SystemExit, match="add or remove a marked table"):
        tool.render(text[:start] + text[end:])


def test_a_row_says_what_help_says(tool):
    rows = {line.split(" | ")[0]: line for line in tool.table("run").splitlines()}
    assert rows["| `--budget`"].startswith("| `--budget` | required | Parameter budget: ")
    assert "| `--download` / `--no-download` | `--no-download` |" in rows["| `--download` / `--no-download`"]
    assert rows["| `--pack-size`"].endswith("[gpu.md](gpu.md). At least 0. |")  # a path links, a range reads
    assert "One of `denoise`, `superres`, `classify`." in rows["| `--task`"]
    assert "| `-h`, `--help` |" in tool.table("hgsearch")
