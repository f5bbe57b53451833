"""Frontier data: every trial and each family's Pareto set, read from the study storage, as tables."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hgsearch.errors import StorageError, UsageError
from hgsearch.model.families import FAMILIES
from hgsearch.store.atomic import atomic_write
from hgsearch.store.schema import (
    DATA_PATH_KEY,
    FINISHED,
    REASON_ATTR,
    RETRY_ATTR,
    SEEDS,
    SETTINGS_KEY,
    family_study_name,
    seeds_study_name,
)
from hgsearch.store.storage import safe_url
from hgsearch.store.studies import open_study, study_names
from hgsearch.training.baselines import Baseline
from hgsearch.training.record import CONFIG_ATTRS, RESULT_ATTRS

# The columns of a trial row (meanings: docs/results.md); a row alone is enough to rebuild and retrain
# its model (record.TrialRecord.from_row). family + trial is a row's unique key.
COLUMNS = ["family", "params", "trainable_params", "psnr_test", "psnr_val", "train_loss", "depth", "width",
           "bottleneck", "lr", "fixed_win", "trial", "retry_of", "d_in", "d_out", "epochs", "seed", "seconds"]
# trials.csv; datetime_complete (Optuna's, local time) orders the finished trials, as results.settledness needs.
TRIAL_COLUMNS = [*COLUMNS, "state", REASON_ATTR, "on_frontier", "datetime_complete"]
FRONTIER_CSV_COLUMNS = [*COLUMNS, "learned_nothing"]  # frontier.csv: the flag needs the baseline (write_tables)


@dataclass(frozen=True)
class Frontier:
    """A study's trials and the Pareto set of each family (from Optuna's best_trials)."""

    study: str
    settings: dict[str, dict[str, Any]]  # per family, the defining settings stored with the study
    trials: pd.DataFrame  # every trial, TRIAL_COLUMNS
    frontier: pd.DataFrame  # Pareto-optimal completed trials of each family, COLUMNS, sorted by params
    data_path: str | None = None  # where `run` last read the data (schema.DATA_PATH_KEY), if it was given one

    def family(self, name: str) -> pd.DataFrame:
        return self.frontier[self.frontier["family"] == name]


def _row(family: str, t: FrozenTrial) -> dict[str, Any]:
    """A trial as a table row: its TrialRecord fields and results (None where not stored yet)."""
    a = t.user_attrs
    history = a.get(RETRY_ATTR) or []
    return {**{k: a.get(k) for k in (*CONFIG_ATTRS, *RESULT_ATTRS)}, "family": family, "trial": t.number,
            "retry_of": history[-1] if history else None, "state": t.state.name, REASON_ATTR: a.get(REASON_ATTR),
            "datetime_complete": t.datetime_complete}


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    df["retry_of"] = df["retry_of"].astype("Int64")  # a trial number, or empty (not 3.0 / NaN)
    return df


def load_frontier(study: str, storage: str) -> Frontier:
    """Read both families' studies; an absent study or one with no completed trial is an error."""
    names = study_names(storage)
    rows, front, settings, data_path = [], [], {}, None
    for fam in FAMILIES:
        name = family_study_name(study, fam)
        if name not in names:
            continue
        s = open_study(name, storage)
        settings[fam] = s.user_attrs.get(SETTINGS_KEY, {})
        data_path = data_path or s.user_attrs.get(DATA_PATH_KEY)
        rows += [_row(fam, t) for t in s.get_trials(deepcopy=False)]
        if any(t.state == TrialState.COMPLETE for t in s.get_trials(deepcopy=False)):
            front += [_row(fam, t) for t in s.best_trials]
    if not settings:
        raise UsageError(f"no study named {study!r} in {safe_url(storage)}: check --study (or run it first)")
    if not front:
        raise UsageError(f"study {study!r} has no completed trial yet: let `hgsearch run` finish one first")
    on_front = {(r["family"], r["trial"]) for r in front}
    for r in rows:
        r["on_frontier"] = (r["family"], r["trial"]) in on_front
    trials = _frame(rows, TRIAL_COLUMNS).sort_values(["family", "trial"], ignore_index=True)
    frontier = _frame(front, COLUMNS).sort_values(["family", "params"], ignore_index=True)
    return Frontier(study, settings, trials, frontier, data_path)


def load_seed_rows(study: str, storage: str) -> pd.DataFrame:
    """Every trial of <study>.seeds (TRIAL_COLUMNS + source_trial); empty when confirm never ran."""
    cols = [*TRIAL_COLUMNS, "source_trial"]
    name = seeds_study_name(study)
    if name not in study_names(storage):
        return pd.DataFrame(columns=cols)
    trials = open_study(name, storage).get_trials(deepcopy=False)
    rows = [{**_row(t.user_attrs.get("family"), t), "source_trial": t.user_attrs.get("source_trial")}
            for t in trials]
    return pd.DataFrame(rows, columns=cols)


def seed_rows(fr: Frontier, seeds: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, one row per (configuration, seed): the search's trials plus confirm's seeds.

    A search trial is its configuration's first seed; confirm adds the others. Should a seed appear
    twice (e.g. two identical search trials), the first run counts once.
    """
    done = [df[df["state"] == "COMPLETE"] for df in (fr.trials, seeds) if len(df)]
    rows = pd.concat(done, ignore_index=True) if done else fr.trials.iloc[:0]
    keys = ["family", "depth", "width", "bottleneck", "lr", "fixed_win", "seed"]
    return rows.drop_duplicates(subset=keys, keep="first").reset_index(drop=True)


STATE_COLUMNS = ["family", "complete", "pruned", "running", "failed", "other", "best_val", "best_test",
                 "best_params", "hours"]


def study_state(study: str, storage: str) -> pd.DataFrame:
    """Per family (and confirm's seeds): trial counts by state, best PSNRs and hours spent.

    One get_trials(deepcopy=False) per study and a single pass over it, so thousands of trials read
    in about a second. Hours are trial wall time (start to end, or to now while running).
    """
    names = study_names(storage)
    now = datetime.datetime.now()
    rows = []
    for fam in (*FAMILIES, SEEDS):
        name = seeds_study_name(study) if fam == SEEDS else family_study_name(study, fam)
        if name not in names:
            continue
        # The finished states (schema.FINISHED: completed, stopped early), running and failed; the rest is "other".
        counts = {state.name: 0 for state in (*FINISHED, TrialState.RUNNING, TrialState.FAIL)}
        other, seconds, best = 0, 0.0, None
        for t in open_study(name, storage).get_trials(deepcopy=False):
            if t.state.name in counts:
                counts[t.state.name] += 1
            else:
                other += 1
            if t.datetime_start is not None:
                seconds += ((t.datetime_complete or now) - t.datetime_start).total_seconds()
            if t.state == TrialState.COMPLETE and (best is None or t.values[1] > best.values[1]):
                best = t
        a = best.user_attrs if best is not None else {}
        rows.append({"family": fam, "complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                     "running": counts["RUNNING"],
                     "failed": counts["FAIL"], "other": other,
                     "best_val": best.values[1] if best is not None else None,
                     "best_test": a.get("psnr_test"), "best_params": a.get("params"), "hours": seconds / 3600})
    if not rows:
        raise UsageError(f"no study named {study!r} in {safe_url(storage)}: check --study (or run it first)")
    return pd.DataFrame(rows, columns=STATE_COLUMNS)


def package_versions() -> dict[str, str]:
    """Versions that decide a result's numbers, for summary.json and the report."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hgsearch", "torch", "optuna", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_tables(fr: Frontier, out_dir: str | Path, baseline: Baseline | None = None) -> list[Path]:
    """frontier.csv and trials.csv in out_dir, each written atomically.

    frontier.csv's learned_nothing flags points whose validation PSNR does not beat the task's
    trivial baseline (baselines.baseline, computed by analysis.analyze from the data); it is empty
    when no baseline is given (the dataset was not found).
    """
    out = Path(out_dir)
    paths = [out / "frontier.csv", out / "trials.csv"]
    flag = fr.frontier["psnr_val"].map(baseline.learned_nothing) if baseline is not None else pd.NA
    front = fr.frontier.assign(learned_nothing=flag)[FRONTIER_CSV_COLUMNS]
    try:
        atomic_write(paths[0], lambda p: front.to_csv(p, index=False))
        atomic_write(paths[1], lambda p: fr.trials.to_csv(p, index=False))
    except OSError as e:
        raise StorageError(f"cannot write to {out} ({e.strerror}): pass a writable --results-dir") from None
    return paths
