"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

A kill, a full disk or an exception at any moment leaves either the old file or the new one, never
half of one, and no temporary file behind (except after kill -9, whose leftovers start with a dot).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_path(dest: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside dest; when the block ends cleanly it replaces dest, else it is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, so a power loss cannot keep an empty file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result file reads like any other
        os.replace(tmp, dest)  # atomic on one filesystem
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call write(temporary path) (pandas, matplotlib, torch.save...), then put the file in place."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        write(str(tmp))


@contextmanager
def atomic_open(dest: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Yield a binary file to stream into; it replaces dest only if the block ends without an exception."""
    with atomic_path(dest, suffix) as tmp, open(tmp, "wb") as out:
        yield out
