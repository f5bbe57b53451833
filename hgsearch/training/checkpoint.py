"""Per-epoch trial checkpoints: atomic writes, weights_only loads, one file per unfinished trial.

Policy: a trial's checkpoint lives at <results-dir>/<study>/checkpoints/<family>-<origin>.pt, where
<origin> is the number of the first trial of its retry chain (a retry is a new Optuna trial with the
same configuration). It is rewritten after every finished epoch, deleted when the trial completes or
fails for good, and kept while the trial waits to be retried. It always lives under the local
--results-dir, also when --storage is a remote database: a trial retried on another host without a
shared results directory starts again from epoch 0 (same configuration and seed, same result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hgsearch.store.atomic import atomic_open

DIRNAME = "checkpoints"


def path_for(study_dir: str | Path, family: str, origin: int) -> Path:
    return Path(study_dir) / DIRNAME / f"{family}-{origin}.pt"


def save(path: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write {meta, state} through a temporary file, fsync, then rename: a kill leaves old or new, never half."""
    with atomic_open(path) as f:
        torch.save({"meta": meta, "state": state}, f)


def load(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) for a readable checkpoint of exactly this trial; (None, why) when it cannot be used.

    weights_only=True: a checkpoint is data (tensors, numbers, strings), never code, so a planted
    or corrupted file cannot run anything; it is then ignored and the trial starts from epoch 0.
    """
    if not path.is_file():
        return None, None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding non-data objects
        return None, f"checkpoint {path} is unreadable ({type(e).__name__}); starting the trial from epoch 0"
    if not isinstance(payload, dict) or payload.get("meta") != meta or not isinstance(payload.get("state"), dict):
        return None, f"checkpoint {path} belongs to another configuration; starting the trial from epoch 0"
    return payload["state"], None


def remove(path: Path) -> None:
    """Delete a checkpoint and any temporary file a killed writer left next to it."""
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def sweep(study_dir: str | Path, family: str, keep: set[int]) -> list[Path]:
    """Remove the family's checkpoints whose trial chain is no longer waiting or running."""
    removed = []
    directory = Path(study_dir) / DIRNAME
    if not directory.is_dir():
        return removed
    for p in directory.glob(f"{family}-*.pt"):
        origin = p.stem[len(family) + 1:]
        if origin.isdigit() and int(origin) not in keep:
            remove(p)
            removed.append(p)
    return removed
