"""Verified downloads: stream into a temp file beside the target, check its md5, only then rename it in.

The progress bar drawn on stderr here, and formats.folder's while it decodes an image folder, are the only
output the library makes without a Reporter (events.py).
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from hgsearch.errors import DataError
from hgsearch.store.atomic import atomic_open

TIMEOUT_S = 60.0  # per socket operation, so a stalled server fails instead of hanging a search
_CHUNK = 1 << 16  # bytes read per step: 64 KiB keeps the md5 and the bar current without a syscall per packet


def fetch(url: str, dest: Path, md5: str, *, timeout: float = TIMEOUT_S) -> None:
    """Download url to dest with a progress bar on stderr; raise DataError, leaving nothing, unless md5 matches."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest, ".part") as out, \
                Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         TimeRemainingColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task(dest.name, total=int(response.headers.get("Content-Length") or 0) or None)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
            if digest.hexdigest() != md5:
                raise DataError(f"{url} arrived with md5 {digest.hexdigest()}, expected {md5}: corrupt or altered "
                                f"copy, discarded; retry later or place a verified {dest.name} in {dest.parent}")
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise DataError(f"could not download {url} into {dest.parent} ({reason}); check the network and that "
                        f"the directory is writable, or place {dest.name} there by hand") from e


def extract(archive: Path, members: dict[str, Path]) -> None:
    """Copy the named regular files out of a tar archive, each atomically; no other path is ever written."""
    try:
        with tarfile.open(archive) as tar:
            for name, dest in members.items():
                source = tar.extractfile(tar.getmember(name))
                if source is None:
                    raise KeyError(f"{name} is not a regular file")
                with source, atomic_open(dest, ".part") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({e}); delete it and download it again") from e
