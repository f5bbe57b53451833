"""Frontier data: every trial and each family's Pareto set, read from the study storage, as tables."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hgsearch.errors import StorageError, UsageError
from hgsearch.models import FAMILIES, ArchSpec
from hgsearch.search import SETTINGS_KEY, _first_line, family_study_name, safe_url

# The columns of frontier.csv; a row alone is enough to rebuild and retrain its model.
COLUMNS = ["family", "params", "trainable_params", "psnr", "psnr_val", "depth", "width", "bottleneck",
           "lr", "fixed_win", "trial", "d_in", "d_out", "epochs", "seed", "seconds"]
TRIAL_COLUMNS = [*COLUMNS, "state", "fail_reason"]


@dataclass(frozen=True)
class Frontier:
    """A study's trials and the Pareto set of each family (from Optuna's best_trials)."""

    study: str
    settings: dict[str, dict[str, Any]]  # per family, the defining settings stored with the study
    trials: pd.DataFrame  # every trial, TRIAL_COLUMNS
    frontier: pd.DataFrame  # Pareto-optimal completed trials of each family, COLUMNS, sorted by params

    def family(self, name: str) -> pd.DataFrame:
        return self.frontier[self.frontier["family"] == name]


def _row(family: str, t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    return {
        "family": family, "params": a.get("params"), "trainable_params": a.get("trainable_params"),
        "psnr": a.get("psnr_test"), "psnr_val": a.get("psnr_val"), "depth": a.get("depth"),
        "width": a.get("width"), "bottleneck": a.get("bottleneck"), "lr": a.get("lr"),
        "fixed_win": a.get("fixed_win"), "trial": t.number, "d_in": a.get("d_in"), "d_out": a.get("d_out"),
        "epochs": a.get("epochs"), "seed": a.get("seed"), "seconds": a.get("seconds"),
        "state": t.state.name, "fail_reason": a.get("fail_reason"),
    }


def load_frontier(study: str, storage: str) -> Frontier:
    """Read both families' studies; an absent study or one with no completed trial is an error."""
    try:
        names = set(optuna.get_all_study_names(storage=storage))
    except Exception as e:
        raise StorageError(f"cannot read storage {safe_url(storage)}: {_first_line(e)}") from None
    rows, front, settings = [], [], {}
    for fam in FAMILIES:
        name = family_study_name(study, fam)
        if name not in names:
            continue
        s = optuna.load_study(study_name=name, storage=storage)
        settings[fam] = s.user_attrs.get(SETTINGS_KEY, {})
        rows += [_row(fam, t) for t in s.get_trials(deepcopy=False)]
        if any(t.state == TrialState.COMPLETE for t in s.get_trials(deepcopy=False)):
            front += [_row(fam, t) for t in s.best_trials]
    if not settings:
        raise UsageError(f"no study named {study!r} in {safe_url(storage)}: check --study (or run it first)")
    if not front:
        raise UsageError(f"study {study!r} has no completed trial yet: let `hgsearch run` finish one first")
    trials = pd.DataFrame(rows, columns=TRIAL_COLUMNS).sort_values(["family", "trial"], ignore_index=True)
    frontier = (pd.DataFrame(front, columns=TRIAL_COLUMNS)[COLUMNS]
                .sort_values(["family", "params"], ignore_index=True))
    return Frontier(study, settings, trials, frontier)


def spec_from_row(row: pd.Series | dict[str, Any]) -> ArchSpec:
    """Rebuild the ArchSpec of a frontier or trials CSV row."""
    return ArchSpec(str(row["family"]), int(row["d_in"]), int(row["d_out"]), int(row["width"]),
                    int(row["bottleneck"]), int(row["depth"]), bool(row["fixed_win"]))


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tables(fr: Frontier, out_dir: str | Path) -> list[Path]:
    """frontier.csv and trials.csv in out_dir, each written atomically."""
    out = Path(out_dir)
    paths = [out / "frontier.csv", out / "trials.csv"]
    try:
        atomic_write(paths[0], lambda p: fr.frontier.to_csv(p, index=False))
        atomic_write(paths[1], lambda p: fr.trials.to_csv(p, index=False))
    except OSError as e:
        raise StorageError(f"cannot write to {out} ({e.strerror}): pass a writable --results-dir") from None
    return paths
