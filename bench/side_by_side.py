"""A real search with and without early stopping, side by side: test-PSNR hypervolume against wall time.

    .venv/bin/python bench/side_by_side.py --storage sqlite:///runs/side-pareto-asha/study.db \
        --storage sqlite:///runs/side-none/study.db

Each --storage holds one `hgsearch run` (both family studies, as `run` names them: <study>.<family>); the
study name defaults to the storage's. Issue 11 asks for the two searches to run for the same wall time on
the same machine (run them concurrently, one core each, so that neither gets a quieter machine). For each
search this prints, at every --every minutes after its first trial started: trials finished, stopped
(PRUNED) and the epochs trained, and the hypervolume (hgsearch.results.stats.hypervolume: parameters in
millions x test PSNR, reference (the searches' budget, the task's trivial-baseline test PSNR), both read
from the studies as `hgsearch frontier` reads them; the same objective as bench/search_replay.py) of the
two families' completed trials together, and of each family alone; then the minute at which each search
first reaches the other's final hypervolume. Only COMPLETE trials count towards a hypervolume: a stopped
trial never reaches the frontier, and a trial still training at the cut has no test PSNR yet.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hgsearch.model.families import FAMILIES
from hgsearch.results.analysis import analyze
from hgsearch.results.stats import hypervolume
from hgsearch.store.schema import CURVE_KEY, family_study_name


@dataclass(frozen=True)
class Search:
    name: str
    t0: float  # POSIX seconds: the first trial's start
    trials: dict[str, list[FrozenTrial]]  # per family


def load(storage: str, study: str | None) -> Search:
    names = optuna.get_all_study_names(storage)
    if study is None:
        bases = {n.rsplit(".", 1)[0] for n in names if n.rsplit(".", 1)[-1] in FAMILIES}
        if len(bases) != 1:
            raise SystemExit(f"error: {storage} holds searches {sorted(bases)}: pass --study")
        study = bases.pop()
    trials = {}
    for fam in FAMILIES:
        if family_study_name(study, fam) in names:
            trials[fam] = optuna.load_study(study_name=family_study_name(study, fam),
                                            storage=storage).get_trials(deepcopy=False)
    starts = [t.datetime_start.timestamp() for ts in trials.values() for t in ts if t.datetime_start]
    if not starts:
        raise SystemExit(f"error: no trial of search {study!r} in {storage} has started")
    return Search(study, min(starts), trials)


def done_by(t: FrozenTrial, cut: float) -> bool:
    return t.datetime_complete is not None and t.datetime_complete.timestamp() <= cut


def at(search: Search, minutes: float, ref: tuple[float, float]) -> dict[str, float]:
    """The search as it stood `minutes` after it started."""
    cut = search.t0 + 60 * minutes
    row: dict[str, float] = {"complete": 0, "pruned": 0, "epochs": 0}
    points: dict[str, list[tuple[float, float]]] = {f: [] for f in search.trials}
    for fam, trials in search.trials.items():
        for t in trials:
            # Finished trials only: a trial cut off by a stop (FAIL, queued as a retry) hands its epochs to
            # the retry, whose curve starts with them, so counting both would count them twice.
            if not done_by(t, cut) or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            row["epochs"] += len(t.user_attrs.get(CURVE_KEY) or [])
            if t.state == TrialState.PRUNED:
                row["pruned"] += 1
            elif t.user_attrs.get("psnr_test") is not None:  # COMPLETE
                row["complete"] += 1
                points[fam].append((t.user_attrs["params"] / 1e6, float(t.user_attrs["psnr_test"])))
    every = [p for ps in points.values() for p in ps]
    row["hv"] = hypervolume(np.array(every), ref) if every else 0.0
    for fam, ps in points.items():
        row[f"hv_{fam}"] = hypervolume(np.array(ps), ref) if ps else 0.0
    return row


def reach(search: Search, target: float, ref: tuple[float, float]) -> float | None:
    """Minutes after its start at which the search's hypervolume first reaches target (None: never)."""
    # The hypervolume changes only when a trial completes: check those moments, in order.
    ends = sorted(t.datetime_complete.timestamp() for ts in search.trials.values() for t in ts
                  if t.state == TrialState.COMPLETE and t.datetime_complete is not None)
    for end in ends:
        minutes = (end - search.t0) / 60
        if at(search, minutes + 1e-6, ref)["hv"] >= target:  # + 1e-6: the float round trip may land before end
            return minutes
    return None


def reference(storage: str, study: str, ref_psnr: float | None, data_dir: str | None) -> tuple[float, float]:
    """(budget in M params, reference test PSNR) of one search, from its stored settings and task data."""
    an = analyze(study, storage, data_dir=data_dir, device="cpu", load_data=ref_psnr is None)  # baseline: data
    if ref_psnr is None:
        if an.baseline is None:
            raise SystemExit(f"error: {an.baseline_note}: pass --data-dir, or --ref-psnr")
        ref_psnr = an.baseline.psnr_test
    return float(an.settings["budget"]) / 1e6, ref_psnr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", action="append", required=True, help="one search's storage URL (give two)")
    ap.add_argument("--study", action="append", help="its study name, in --storage's order (default: the only one)")
    ap.add_argument("--ref-psnr", type=float, help="reference test PSNR (default: the task's trivial baseline)")
    ap.add_argument("--data-dir", help="where the task's data is, for the baseline (default: where `run` looks)")
    ap.add_argument("--every", type=float, default=10.0, help="minutes between rows")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = args.study or [None] * len(args.storage)
    if len(studies) != len(args.storage):
        ap.error("give --study once per --storage, or not at all")
    searches = [load(s, n) for s, n in zip(args.storage, studies, strict=True)]
    refs = {reference(s, n.name, args.ref_psnr, args.data_dir) for s, n in zip(args.storage, searches, strict=True)}
    if len(refs) != 1:
        raise SystemExit(f"error: the searches differ in budget or baseline {sorted(refs)}: compare like with like")
    ref = refs.pop()
    ends = [max(t.datetime_complete.timestamp() for ts in s.trials.values() for t in ts if t.datetime_complete)
            for s in searches]
    span = max(e - s.t0 for e, s in zip(ends, searches, strict=True)) / 60
    fams = [f for f in FAMILIES if any(f in s.trials for s in searches)]
    marks = [float(m) for m in np.arange(args.every, span, args.every)] + [span]
    rows = {s.name: [at(s, m, ref) for m in marks] for s in searches}
    print(f"test-PSNR hypervolume (M params x dB; reference {ref[0]:g}M params, {ref[1]:.2f} dB) of the "
          f"completed trials, both families together, against minutes since each search's first trial")
    print()
    print("| minutes | " + " | ".join(s.name for s in searches) + " |")
    print("|---|" + "---|" * len(searches))
    for i, m in enumerate(marks):
        print(f"| {m:.4g} | " + " | ".join(f"{rows[s.name][i]['hv']:.3f}" for s in searches) + " |")
    print()
    for s in searches:
        for other in searches:
            if other is not s:
                target = rows[other.name][-1]["hv"]
                when = reach(s, target, ref)
                print(f"{s.name} reaches {other.name}'s final hypervolume ({target:.3f}): "
                      + (f"after {when:.1f} minutes" if when is not None else "not within its run"))
    for s in searches:
        print(f"\n{s.name}: by then, trials completed / stopped by the pruner, epochs trained, and each "
              f"family's hypervolume alone\n")
        print("| minutes | completed | stopped | epochs | " + " | ".join(f"HV {f}" for f in fams) + " |")
        print("|---|---|---|---|" + "---|" * len(fams))
        for m, r in zip(marks, rows[s.name], strict=True):
            print(f"| {m:.4g} | {r['complete']:.0f} | {r['pruned']:.0f} | {r['epochs']:.0f} | "
                  + " | ".join(f"{r.get(f'hv_{f}', 0.0):.3f}" for f in fams) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
