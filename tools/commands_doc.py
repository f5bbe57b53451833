"""Write docs/commands.md's option tables from the commands' own --help, between marker comments.

Each table sits between `<!-- options: NAME ... -->` and `<!-- end options -->` (NAME is a command, or
`hgsearch` for the global options); the prose around the tables is written by hand and left as it is.
A row is what `hgsearch NAME --help` prints for the option, read from Click's help record: its help
text, its default (or "required"), its range and its choices. After changing an option or its help
string, run `.venv/bin/python tools/commands_doc.py`; `--check` only says whether the file is
current (tests/test_commands_doc.py checks the same).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
import typer.main
from typer.core import TyperOption

from hgsearch.cli.commands import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
TOP = "hgsearch"  # the marker name of the global options' table
MARKED = re.compile(r"(?P<begin><!-- options: (?P<name>[\w-]+)\b[^\n]*-->\n).*?(?P<end><!-- end options -->)", re.S)
NAMES = re.compile(r"^(?P<names>.*?)(?: (?P<metavar><[^>]*>))?$")  # Click: "--task <a|b>", "-h, --help"
EXTRAS = re.compile(r"^(?P<help>.*?)(?:  \[(?P<extras>[^\]]*)\])?$", re.S)  # Click: "help  [default: x; x>=0]"
# A path in a help string becomes a link relative to docs/; an option name becomes code.
PATH = re.compile(r"\b(?P<dir>docs|notes|configs)/(?P<file>[\w.-]+\.(?:md|toml))(?P<anchor>#[\w-]+)?")
OPTION = re.compile(r"(?<![\w`-])(--[a-z][a-z-]*)")


def _markdown(text: str) -> str:
    """Help text as a table cell: `|` and `<` escaped outside code spans, options as code, paths as links."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        plain = parts[i].replace("|", r"\|").replace("<", r"\<")
        plain = OPTION.sub(r"`\1`", plain)
        parts[i] = PATH.sub(_link, plain)
    return "`".join(parts)


def _link(m: re.Match[str]) -> str:
    target = m["file"] if m["dir"] == "docs" else f"../{m['dir']}/{m['file']}"
    label = m["file"] if m["dir"] == "docs" else f"{m['dir']}/{m['file']}"
    return f"[{label}]({target}{m['anchor'] or ''})"


def _code(text: str) -> str:
    return "`" + text.replace("|", r"\|") + "`"


def _row(param: TyperOption, ctx: typer.Context) -> tuple[str, str, str] | None:
    """(option, default, what it does) as --help prints them, or None for a hidden option."""
    record = param.get_help_record(ctx)  # ("--task <a|b>", "help  [default: a]"), ("-h, --help", "help")
    if record is None:
        return None
    names, metavar = NAMES.match(record[0]).group("names", "metavar")
    option = " / ".join(", ".join(map(_code, side.split(", "))) for side in names.split(" / "))
    help_text, extras = EXTRAS.match(record[1]).group("help", "extras")
    default, notes = "", []
    for extra in extras.split("; ") if extras else []:
        if extra == "required":
            default = "required"
        elif extra.startswith("default: "):
            value = extra.removeprefix("default: ")
            if isinstance(param.show_default, str) and " " in value:  # described in words, "the study's file"
                default = _markdown(value)
            else:  # a value; a flag pair's default is the side it names
                default = _code(f"--{value}" if param.secondary_opts else value)
        else:  # a range, "x>=1"
            bound = re.fullmatch(r"x>=(\S+)", extra)
            notes.append(f"At least {bound[1]}." if bound else f"Range: {_code(extra)}.")
    if not default and param.is_flag and not param.secondary_opts and param.default is False:
        default = "off"
    if metavar and "|" in metavar:  # a choice: <a|b|c>
        notes.insert(0, "One of " + ", ".join(map(_code, metavar.strip("<>").split("|"))) + ".")
    return option, default, " ".join([_markdown(help_text), *notes])


def table(name: str) -> str:
    """The option table of one command (or of `hgsearch` itself), as markdown lines.

    The default column is left out when --help shows no default at all (the global options).
    """
    group = typer.main.get_command(app)
    top = typer.Context(group, info_name=TOP, **group.context_settings)  # help_option_names: -h too
    command = group if name == TOP else group.commands[name]
    ctx = top if name == TOP else typer.Context(command, info_name=name, parent=top)
    help_names = set(ctx.help_option_names)
    rows = [r for p in command.get_params(ctx)
            if (name == TOP or not help_names & set(p.opts)) and (r := _row(p, ctx))]  # --help: global table only
    if any(default not in ("", "off") for _, default, _ in rows):
        lines = ["| option | default | what it does |", "|---|---|---|", *(f"| {' | '.join(r)} |" for r in rows)]
    else:
        lines = ["| option | what it does |", "|---|---|", *(f"| {o} | {t} |" for o, _, t in rows)]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """The document with every marked table rewritten; refused when a command has no table or a table no command."""
    found = [m["name"] for m in MARKED.finditer(text)]
    wanted = [TOP, *typer.main.get_command(app).commands]
    if sorted(found) != sorted(wanted):
        raise SystemExit(f"{DOC.name}: option tables for {found}, but the commands are {wanted}: add or remove "
                         "a marked table (<!-- options: NAME -->, a table, <!-- end options -->)")
    return MARKED.sub(lambda m: m["begin"] + table(m["name"]) + m["end"], text)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: commands_doc.py [--check]", file=sys.stderr)
        return 2
    text = DOC.read_text()
    new = render(text)
    if new == text:
        return 0
    if check:
        print(f"{DOC} is out of date: run .venv/bin/python tools/commands_doc.py", file=sys.stderr)
        return 1
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
