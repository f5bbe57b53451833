"""Core text helpers shared by the library and the CLI: plural nouns, an error's first line."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def plural(n: int, word: str) -> str:
    """'1 trial', '2 trials': counts read as English (word is the singular)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
