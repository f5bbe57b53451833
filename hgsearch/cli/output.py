"""Where the CLI prints: stdout for results (say), stderr for diagnostics (note), never wrapped."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Piped or redirected, rich assumes 80 columns and cuts table cells short ("convention…", "21.86 ± 0.…");
# a log file has no width to respect, so tables get the room they need unless COLUMNS says otherwise.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err = Console(stderr=True)


def say(text: str) -> None:
    """A plain line on stdout: no markup, no highlighting, never wrapped (it may go to a log)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def note(text: str) -> None:
    """A diagnostic line on stderr, so stdout stays clean for --json and pipes."""
    err.print(text, markup=False, highlight=False, soft_wrap=True)
