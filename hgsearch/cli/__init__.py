"""The command line: a thin Typer app over the library (commands, option parsing, progress, printing)."""

from hgsearch.cli.commands import app, main

__all__ = ["app", "main"]
