"""A study's results: the Analysis that `frontier` and `report` present (the families' means frontiers
compared by results.stats), the study's configuration and data, summary.json and the files `frontier` writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.data.registry import USER_SOURCES
from hgsearch.data.tasks import TaskData, load_task
from hgsearch.errors import DataError, StorageError, StudyMismatchError
from hgsearch.results.settledness import SETTLED_CSV_COLUMNS, Settledness, settledness
from hgsearch.results.stats import (
    CONFIG_KEYS,
    N_BINS,
    Comparison,
    compare,
    json_ready,
    means_frontiers,
    scaling_pattern,
    shared_reference,
)
from hgsearch.results.trials import Frontier, load_frontier, load_seed_rows, package_versions, seed_rows, write_tables
from hgsearch.search.identity import config_from_settings
from hgsearch.store.atomic import atomic_write
from hgsearch.store.schema import DIRECTIONS, METRIC_NAMES
from hgsearch.store.storage import safe_url
from hgsearch.training.baselines import Baseline, baseline


def stored_settings(fr: Frontier) -> dict[str, Any]:
    """The settings stored with the study (every family's study stores the same defining ones)."""
    return next(iter(fr.settings.values()), {})


def study_config(fr: Frontier, *, data_dir: str | None = None, device: str = "auto") -> RunConfig:
    """The RunConfig the study was searched with (identity.config_from_settings of its stored settings).

    Its data is read from data_dir when given, else from where `run` last read it while that path exists
    on this machine (another machine's path: where `run` would look)."""
    if data_dir is None and fr.data_path and Path(fr.data_path).exists():
        data_dir = fr.data_path
    settings = stored_settings(fr)
    dataset = settings.get("dataset")
    if data_dir is None and dataset in USER_SOURCES:  # the user's own files: nowhere else to look
        where = f"{fr.data_path}, which is not on this machine" if fr.data_path else "a path this study did not store"
        raise DataError(f"study {fr.study!r} read its {dataset} data from {where}: pass it with --data-dir")
    return config_from_settings(settings, fr.study, data_dir=data_dir, device=device)


def load_checked_task(fr: Frontier, cfg: RunConfig) -> TaskData:
    """The study's task data, refused when the dataset's checksum differs from the stored one."""
    data = load_task(cfg)
    stored = stored_settings(fr).get("dataset_checksum")
    if stored and data.checksum != stored:
        raise StudyMismatchError(
            f"the {cfg.dataset} data found ({data.checksum[:12]}...) is not the data study {fr.study!r} "
            f"was searched on ({stored[:12]}...): pass the original files with --data-dir")
    return data


def study_means_frontier(fr: Frontier, seeds_df: pd.DataFrame) -> pd.DataFrame:
    """The means frontier (stats.means_frontiers) of the search's trials and confirm's seeds, with std and
    seed counts, and each point's first trial."""
    rows = seed_rows(fr, seeds_df)
    front = means_frontiers(rows)
    first = rows.drop_duplicates(subset=CONFIG_KEYS, keep="first")
    extra = first[[*CONFIG_KEYS, "trial", "seed", "d_in", "d_out", "epochs"]]
    return front.merge(extra, on=CONFIG_KEYS, how="left")


@dataclass
class Analysis:
    """Everything `frontier` prints and `report` shows about one study."""

    fr: Frontier
    storage: str
    settings: dict[str, Any]  # the study's stored settings (hourglass's, else conventional's)
    rows: pd.DataFrame  # finished runs, one per (configuration, seed): search trials + confirm's seeds
    front: pd.DataFrame  # the means frontier (psnr_test = mean test PSNR, psnr_test_std, n_seeds)
    comparison: Comparison | None  # None when only one family has finished trials
    scaling: pd.DataFrame
    baseline: Baseline | None
    baseline_note: str | None  # why there is no baseline (dataset not found here)
    data: TaskData | None
    settled: Settledness  # whether more trials would likely change the answer, per budget

    @property
    def seeds(self) -> int:
        """Fewest seeds behind any frontier point (1 until `hgsearch confirm` ran)."""
        return int(self.front["n_seeds"].min()) if len(self.front) else 0

    @property
    def flagged(self) -> set[tuple[str, int]]:
        """(family, trial) of frontier points no better than the trivial baseline: they learned nothing."""
        if self.baseline is None:
            return set()
        return {(r["family"], int(r["trial"])) for _, r in self.front.iterrows()
                if self.baseline.learned_nothing(r["psnr_val"])}


def analyze(study: str, storage: str, *, data_dir: str | None = None, device: str = "auto",
            load_data: bool = True, n_bins: int = N_BINS) -> Analysis:
    """Load a study (and confirm's seeds), compute baselines, the comparison and the scaling pattern.

    The data is needed only for the baselines (and the report's pictures); when it cannot be found
    here, the comparison is still made and summary.json says why the baseline is missing.
    """
    fr = load_frontier(study, storage)
    settings = fr.settings.get("hourglass") or next(iter(fr.settings.values()))
    seeds = load_seed_rows(study, storage)
    rows = seed_rows(fr, seeds)
    front = study_means_frontier(fr, seeds)
    data, base, note = None, None, None
    if load_data:
        try:
            data = load_checked_task(fr, study_config(fr, data_dir=data_dir, device=device))
            base = baseline(data)
        except DataError as e:
            note = f"no baseline: {e}"
    budget = float(settings["budget"])
    families = set(rows["family"])
    comp = None
    base_psnr = base.psnr_val if base else None
    if {"hourglass", "conventional"} <= families:
        comp = compare(rows, budget, baseline_psnr=base_psnr, n_bins=n_bins)
    # The hypervolume curve is measured from the comparison's reference; with one family, from the same rule's.
    ref = comp.reference if comp else shared_reference([rows[rows["family"] == f] for f in sorted(families)],
                                                       budget, baseline_psnr=base_psnr)
    min_fraction = (settings.get("space") or {}).get("min_fraction", SpaceConfig.min_fraction)
    settled = settledness(fr.trials, int(budget), float(min_fraction), ref)
    return Analysis(fr, storage, settings, rows, front, comp, scaling_pattern(rows, budget, n_bins), base,
                    note, data, settled)


def published(an: Analysis) -> pd.DataFrame | None:
    """The paper's MNIST frontier for this task, when the study is that experiment (MNIST, same sizes)."""
    from hgsearch.results.paper import D_IN, D_OUT, FRONTIERS, published_front

    s = an.settings
    if (s.get("dataset") != "mnist" or s.get("task") not in FRONTIERS or s.get("fixed_win")
            or s.get("d_in") != D_IN[s["task"]] or s.get("d_out") != D_OUT):
        return None
    return published_front(s["task"])


def _front_records(an: Analysis) -> list[dict[str, Any]]:
    keep = ["family", "params", "trainable_params", "depth", "width", "bottleneck", "lr", "psnr_val",
            "psnr_val_std", "psnr_test", "psnr_test_std", "n_seeds", "trial", "seed"]
    flagged = an.flagged
    out = []
    for rec in an.front[keep].to_dict("records"):
        # None without a baseline (data not found): unknown, not "learned something".
        rec["learned_nothing"] = (rec["family"], int(rec["trial"])) in flagged if an.baseline else None
        out.append(rec)
    return out


def summary(an: Analysis) -> dict[str, Any]:
    """summary.json: what was compared, how, on which data and software, and the answer."""
    s = an.settings
    comp = an.comparison.to_dict() if an.comparison else None
    return json_ready({
        "study": an.fr.study,
        "storage": safe_url(an.storage),
        "objectives": dict(zip(METRIC_NAMES, DIRECTIONS, strict=True)),
        "selection": "frontier points chosen on validation PSNR (mean over seeds, best lr per shape); "
                     "test PSNR reported only",
        "budget": s.get("budget"),
        "reference_point": comp["reference"] if comp else None,
        "task": s.get("task"),
        "dataset": {"name": s.get("dataset"), "checksum": s.get("dataset_checksum")},
        "protocol": s.get("protocol"),
        "settings": an.fr.settings,
        "versions": package_versions(),
        "seeds_per_point": an.seeds,
        "comparison": comp,
        "comparison_note": None if comp else "only one family has finished trials: nothing to compare",
        "baseline": an.baseline.to_dict() if an.baseline else None,
        "baseline_note": an.baseline_note,
        "frontier": _front_records(an),
        "scaling_pattern": an.scaling.to_dict("records"),
        "settled": an.settled.to_dict(),
    })


def figure_kw(an: Analysis) -> dict[str, Any]:
    base = (an.baseline.method.split(" of ")[0].split(" (")[0], an.baseline.psnr_test) if an.baseline else None
    return {"means": an.front, "baseline": base, "published": published(an), "flagged": an.flagged}


CURVES_TITLE = "validation PSNR per epoch (frontier trials thick, stopped trials faint)"
HYPERVOLUME_TITLE = "each frontier's hypervolume as trials finished (still rising at its end: more trials move it)"


def frontier_trials(an: Analysis) -> dict[str, set[int]]:
    """Each family's frontier trial numbers, the curves a learning-curve figure draws thick."""
    return {fam: {int(t) for t in g["trial"]} for fam, g in an.fr.frontier.groupby("family")}


def write_outputs(an: Analysis, out_dir: str | Path, *, plot: bool = False) -> list[Path]:
    """frontier.csv, trials.csv, curves.csv, settled.csv, summary.json (+ frontier_means.csv with seeds;
    + figures with plot)."""
    from hgsearch.results.curves import load_curves, write_curves

    out = Path(out_dir)
    paths = write_tables(an.fr, out, an.baseline)
    lines = load_curves(an.fr.study, an.storage)
    paths.append(write_curves(lines, out))
    try:
        text = json.dumps(summary(an), indent=2)
        paths.append(out / "summary.json")
        atomic_write(paths[-1], lambda p: Path(p).write_text(text + "\n"))
        paths.append(out / "settled.csv")
        verdicts = pd.DataFrame(an.settled.rows(), columns=SETTLED_CSV_COLUMNS)
        atomic_write(paths[-1], lambda p: verdicts.to_csv(p, index=False))
        if an.seeds > 1:
            paths.append(out / "frontier_means.csv")
            atomic_write(paths[-1], lambda p: an.front.to_csv(p, index=False))
        if plot:
            from hgsearch.results import plots

            paths += plots.save_all(plots.frontier_figure(an.fr, **figure_kw(an)), out / "frontier")
            paths += plots.save_all(plots.scaling_figure(an.scaling, f"{an.fr.study}: best shape per budget"),
                                    out / "scaling")
            paths += plots.save_all(plots.curves_figure(lines, frontier_trials(an), CURVES_TITLE), out / "curves")
            paths += plots.save_all(plots.hypervolume_figure(an.settled.curve, an.settled.reference, HYPERVOLUME_TITLE),
                                    out / "hypervolume")
    except OSError as e:
        raise StorageError(f"cannot write to {out} ({e.strerror}): pass a writable --results-dir") from None
    return paths
