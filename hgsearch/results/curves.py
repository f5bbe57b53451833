"""curves.csv: every trial's stored learning curve as one row per epoch (the figure: plots.curves_figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial

from hgsearch.errors import StorageError
from hgsearch.names import FAMILIES
from hgsearch.store.atomic import atomic_write
from hgsearch.store.schema import CURVE_KEY, CURVE_SECONDS_KEY, family_study_name
from hgsearch.store.studies import open_study, study_names

CURVE_COLUMNS = ["family", "trial", "state", "epoch", "psnr_val_epoch", "seconds"]


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
    names = study_names(storage)
    rows: list[dict[str, Any]] = []
    for fam in FAMILIES:
        name = family_study_name(study, fam)
        if name in names:
            rows += curve_rows(fam, open_study(name, storage).get_trials(deepcopy=False))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).sort_values(["family", "trial", "epoch"], ignore_index=True)


def write_curves(curves: pd.DataFrame, out_dir: str | Path) -> Path:
    """curves.csv in out_dir (beside trials.csv), written atomically."""
    path = Path(out_dir) / "curves.csv"
    try:
        atomic_write(path, lambda p: curves.to_csv(p, index=False))
    except OSError as e:
        raise StorageError(f"cannot write to {path.parent} ({e.strerror}): pass a writable --results-dir") from None
    return path
