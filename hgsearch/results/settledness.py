"""How settled a study's answer is: each family's hypervolume against finished trials, and search.settled's
verdict per budget, both on the trials in the order they finished."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hgsearch.names import FAMILIES
from hgsearch.results.stats import MILLION, hypervolume, json_ready
from hgsearch.search import settled
from hgsearch.search.settled import Point, Verdict
from hgsearch.store.schema import FINISHED

CURVE_COLUMNS = ["family", "finished", "trial", "state", "hypervolume"]
SETTLED_CSV_COLUMNS = ["budget", "state", "gap", "earlier_gap", "count_hourglass", "count_conventional", "why"]


def finish_order(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials (completed or stopped early, schema.FINISHED) by completion time, then number."""
    done = trials[trials["state"].isin([s.name for s in FINISHED])]
    return done.sort_values(["datetime_complete", "trial"], kind="stable", ignore_index=True)


def finished_points(trials: pd.DataFrame) -> dict[str, list[Point]]:
    """Per family, (params, psnr_val) of its COMPLETE trials in the order they finished: settled.verdicts' input.

    Both families are always keys, so a verdict's counts name a family that has no finished model yet."""
    done = finish_order(trials)
    done = done[done["state"] == "COMPLETE"]
    return {fam: [(int(p), float(v)) for p, v in zip(g["params"], g["psnr_val"], strict=True)]
            for fam in FAMILIES for g in [done[done["family"] == fam]]}


def hypervolume_curve(trials: pd.DataFrame, reference: tuple[float, float]) -> pd.DataFrame:
    """Per family, after each finished trial, the hypervolume (dB x M params) of its COMPLETE trials so far.

    reference = (params, dB) is the comparison's (stats.shared_reference), so a family's last value is the
    hypervolume of its Pareto set (frontier.csv): the comparison's until `confirm` adds seeds (the comparison
    then uses seed means). A trial stopped early counts as a trial and adds no point. Columns CURVE_COLUMNS;
    finished counts the family's trials from 1.
    """
    ref = (reference[0] / MILLION, reference[1])
    done = finish_order(trials)
    rows = []
    for fam in FAMILIES:
        front: list[tuple[float, float]] = []  # the non-dominated points so far: all the area needs
        hv = 0.0
        part = done[done["family"] == fam]
        for n, (trial, state, params, psnr) in enumerate(
                zip(part["trial"], part["state"], part["params"], part["psnr_val"], strict=True), start=1):
            if state == "COMPLETE" and psnr is not None and math.isfinite(psnr):
                p = (float(params) / MILLION, float(psnr))
                if not any(x <= p[0] and y >= p[1] for x, y in front):
                    front = [(x, y) for x, y in front if not (p[0] <= x and p[1] >= y)] + [p]
                    hv = hypervolume(front, ref)
            rows.append({"family": fam, "finished": n, "trial": int(trial), "state": state, "hypervolume": hv})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


@dataclass(frozen=True)
class Settledness:
    """Whether more trials would likely change the study's answer: settled.verdicts at settled.budget_grid's
    budgets, and the hypervolume curve that shows the same thing as a picture."""

    verdicts: list[Verdict]
    curve: pd.DataFrame  # hypervolume_curve
    reference: tuple[float, float]  # (params, dB) the hypervolumes are measured from
    finished: dict[str, int]  # finished trials per family (completed or stopped early)

    @property
    def settled(self) -> bool:
        return settled.is_settled(self.verdicts)

    @property
    def open_budgets(self) -> list[int]:
        """Budgets where both families compete and the answer is not settled yet."""
        return [v.budget for v in self.verdicts if v.state not in ("settled", "one family")]

    def headline(self) -> str:
        """The one-line overall answer, with what to do when it is not settled."""
        if self.settled:
            where = "" if all(v.state == "settled" for v in self.verdicts) else " where both families have models"
            return f"settled at every budget{where}: more trials would likely not change the answer"
        counts = ", ".join(f"{n} {f}" for f, n in self.finished.items())
        if not self.open_budgets:
            return (f"not settled: no budget has finished models of both families to compare ({counts} trials "
                    "finished); run the same command with more --trials (and --family both)")
        at = ", ".join(budget_label(b) for b in self.open_budgets)
        return (f"not settled: more trials would likely change the answer at {at}; run the same command with "
                f"more --trials (now {counts} finished), or with --until-settled (capped by --max-trials)")

    def rows(self) -> list[dict[str, Any]]:
        """One row per budget, SETTLED_CSV_COLUMNS (settled.csv, summary.json)."""
        return [{"budget": v.budget, "state": v.state, "gap": v.gap, "earlier_gap": v.earlier_gap,
                 **{f"count_{f}": v.counts.get(f, 0) for f in FAMILIES}, "why": v.why()} for v in self.verdicts]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for summary.json."""
        return json_ready({"settled": self.settled, "headline": self.headline(), "reference": self.reference,
                           "finished": self.finished, "thresholds": thresholds(), "budgets": self.rows()})


def budget_label(params: int) -> str:
    """A budget as the gap table writes it: millions with three decimals."""
    return f"{params / MILLION:.3f}M"


def thresholds() -> dict[str, float | bool | None]:
    """search.settled's rule constants, recorded beside the verdicts they produced (no limit on a family's
    gain is None: JSON has no infinity)."""
    return {"min_trials": settled.MIN_TRIALS, "move_db": settled.MOVE_DB, "tie_db": settled.TIE_DB,
            "last_share": settled.LAST_SHARE, "halves": settled.HALVES, "budget_steps": settled.BUDGET_STEPS,
            "improve_db": None if math.isinf(settled.IMPROVE_DB) else settled.IMPROVE_DB}


def settledness(trials: pd.DataFrame, budget: int, min_fraction: float,
                reference: tuple[float, float]) -> Settledness:
    """The verdicts at settled.budget_grid (from where both families can exist) and the hypervolume curve on reference,
    from a study's trials table (results.trials.Frontier.trials)."""
    done = finish_order(trials)
    finished = {fam: int((done["family"] == fam).sum()) for fam in FAMILIES}
    lo = int(min_fraction * budget)
    if len(trials) and {"d_in", "d_out"} <= set(trials.columns):
        lo = settled.comparison_floor(int(budget), min_fraction, int(trials["d_in"].iloc[0]),
                                      int(trials["d_out"].iloc[0]))
    verdicts = settled.verdicts(finished_points(trials), settled.budget_grid(int(budget), lo))
    return Settledness(verdicts, hypervolume_curve(trials, reference), (float(reference[0]), float(reference[1])),
                       finished)
