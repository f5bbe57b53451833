"""Learning curves: per-epoch validation PSNR stored on each trial and curves.csv (the figure: plots.curves_figure).

Optuna refuses trial.report() in multi-objective studies, and writing intermediate values through
the storage instead would break TPE (it ranks PRUNED trials by their last intermediate value using
study.direction, which raises with two objectives). So a curve is the user attribute CURVE_KEY, the
list of validation PSNRs after epoch 1, 2, ..., rewritten after every epoch together with
CURVE_SECONDS_KEY (the trial's wall seconds at each epoch end); optuna-dashboard shows both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from hgsearch.atomic import atomic_write
from hgsearch.errors import StorageError
from hgsearch.models import FAMILIES
from hgsearch.pruning import Observation
from hgsearch.storage import family_study_name

CURVE_KEY = "curve"
CURVE_SECONDS_KEY = "curve_seconds"
CURVE_COLUMNS = ["family", "trial", "state", "epoch", "psnr_val_epoch", "seconds"]


def curve_attrs(curve: list[float], seconds: list[float]) -> dict[str, list[float]]:
    """The user attributes to set on a trial after an epoch (both lists are one entry per epoch)."""
    return {CURVE_KEY: [float(v) for v in curve], CURVE_SECONDS_KEY: [float(s) for s in seconds]}


def observation(family: str, trial: FrozenTrial) -> Observation | None:
    """A stored trial as the pruner sees it, or None before its first epoch (or without a size)."""
    curve = trial.user_attrs.get(CURVE_KEY)
    params = trial.user_attrs.get("params")
    if not curve or params is None:
        return None
    return Observation(family, trial.number, int(params), tuple(float(v) for v in curve))


def curve_rows(family: str, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per recorded epoch of each trial (trials without a curve give none)."""
    rows = []
    for t in trials:
        curve = t.user_attrs.get(CURVE_KEY) or []
        secs = t.user_attrs.get(CURVE_SECONDS_KEY) or []
        for i, v in enumerate(curve):
            rows.append({"family": family, "trial": t.number, "state": t.state.name, "epoch": i + 1,
                         "psnr_val_epoch": float(v), "seconds": float(secs[i]) if i < len(secs) else None})
    return rows


def load_curves(study: str, storage: str) -> pd.DataFrame:
    """Every recorded learning curve of a search's family studies, CURVE_COLUMNS, sorted."""
    names = set(optuna.get_all_study_names(storage))
    rows: list[dict[str, Any]] = []
    for fam in FAMILIES:
        name = family_study_name(study, fam)
        if name in names:
            rows += curve_rows(fam, optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).sort_values(["family", "trial", "epoch"], ignore_index=True)


def write_curves(curves: pd.DataFrame, out_dir: str | Path) -> Path:
    """curves.csv in out_dir (beside trials.csv), written atomically."""
    path = Path(out_dir) / "curves.csv"
    try:
        atomic_write(path, lambda p: curves.to_csv(p, index=False))
    except OSError as e:
        raise StorageError(f"cannot write to {path.parent} ({e.strerror}): pass a writable --results-dir") from None
    return path
