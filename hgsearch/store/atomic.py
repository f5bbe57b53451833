"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

A kill, a full disk or an exception at any moment leaves either the old file or the new one, never
half of one, and no temporary file behind (except after kill -9, whose leftovers start with a dot).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from hgsearch.errors import StorageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


LOW_SPACE = 1 << 20  # bytes; a write that fails with less than this free is taken as a full disk


def _free(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _no_space(e: Exception, directory: Path) -> bool:
    """A full disk (or quota). torch.save reports it as a RuntimeError without errno, hence the free-space check."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        return _free(directory) < LOW_SPACE
    except OSError:
        return False


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


@contextmanager
def atomic_path(dest: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside dest; when the block ends cleanly it replaces dest, else it is removed.

    A full disk raises StorageError naming dest, what it needed and what is free; dest is untouched.
    """
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename, so a power loss cannot keep an empty file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result file reads like any other
        os.replace(tmp, dest)  # atomic on one filesystem
    except Exception as e:
        if not _no_space(e, dest.parent):
            raise
        # What it wrote before the disk filled, or the size of the file it replaces, is a lower bound.
        need = max(_size(tmp), _size(dest))
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise StorageError(
            f"disk full: cannot write {dest} (it needs more than {_mb(need)}, {_mb(_free(dest.parent))} is "
            "free there): free space or pass a --results-dir on a disk with room, then run the same command again"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call write(temporary path) (pandas, matplotlib, torch.save...), then put the file in place."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        write(str(tmp))


@contextmanager
def atomic_open(dest: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Yield a binary file to stream into; it replaces dest only if the block ends without an exception."""
    with atomic_path(dest, suffix) as tmp, open(tmp, "wb") as out:
        yield out
