"""Whether a study's answer is settled: per budget, would more trials likely change which family wins?

The answer at a budget B is the gap between the families' best validation PSNR among models of at
most B parameters (Hourglass minus conventional). Training noise moves a point by <= 0.08 dB
between seeds (measured; docs/fashion-mnist); what the search happened to draw moved the same
answer by 0.4 dB between two runs of one command. So a budget's verdict asks the study itself:
- "one family": only one family has a finished model within B (nothing to compare);
- "few trials": a family has fewer than MIN_TRIALS finished models within B;
- "unsettled": the last quarter of each family's finished trials still moved the answer (its winner,
  or its gap by more than MOVE_DB), or its odd and even trials, two searches of half the size, give
  different answers: more trials would likely move it;
- "settled": it did not; a settled gap within TIE_DB is a tie (seed noise decides it).
The rule was chosen on bench/search_quality.py's replays (bench/RESULTS.md, "Search quality"): without
the halves test, searches called settled agreed with the table's truth in only 6-25% of cases; with
it, none was called settled wrongly, but its >= 90% agreement when settled is not validated yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from hgsearch.model import space
from hgsearch.names import FAMILIES

MIN_TRIALS = 3  # finished models per family within a budget before its answer means anything
MOVE_DB = 0.1  # a change of the gap larger than this is a change of the answer
TIE_DB = 0.1  # the seed-to-seed spread of one point (<= 0.08 dB measured): smaller gaps are ties
LAST_SHARE = 0.25  # the share of the latest trials whose effect on the answer is checked
HALVES = True  # also require each family's odd and even trials to give the same answer
IMPROVE_DB = math.inf  # a family's best within a budget rising by more than this over them is not settled either
SETTLE_STEP = 4  # trials per family `run --until-settled` adds each time the answer is not settled yet
BUDGET_STEPS = 4  # budgets compared: this many, log-spaced from where both families exist to the budget

Point = tuple[int, float]  # (parameters, validation PSNR) of one COMPLETE trial


@dataclass(frozen=True)
class Verdict:
    """The answer at one budget and how settled it is."""

    budget: int  # models with at most this many parameters
    state: str  # settled | unsettled | few trials | one family
    gap: float | None  # best Hourglass minus best conventional PSNR within the budget, dB
    earlier_gap: float | None  # the same without each family's last quarter of trials
    counts: dict[str, int]  # finished models within the budget, per family
    halves: tuple[float | None, float | None] = (None, None)  # the gap from each family's odd, even trials

    @property
    def winner(self) -> str | None:
        """The family ahead, or None for no comparison or a tie within seed noise."""
        if self.gap is None or abs(self.gap) <= TIE_DB:
            return None
        return "hourglass" if self.gap > 0 else "conventional"

    def why(self) -> str:
        """One line for the user."""
        c = ", ".join(f"{n} {f}" for f, n in self.counts.items())
        if self.state == "one family":
            return f"not both families have a model within this budget ({c})"
        if self.state == "few trials":
            return f"too few finished models within this budget ({c}; {MIN_TRIALS} per family needed)"
        assert self.gap is not None
        if self.state == "unsettled":
            before = "no comparison" if self.earlier_gap is None else f"{self.earlier_gap:+.2f} dB"
            if self.earlier_gap is not None and _agree(self.gap, self.earlier_gap):
                a, b = ("none" if g is None else f"{g:+.2f} dB" for g in self.halves)
                return (f"the gap is {self.gap:+.2f} dB, but half the trials say {a} and the other half {b}: "
                        "more trials would likely move it")
            return (f"the last {LAST_SHARE:.0%} of the trials moved the gap from {before} to {self.gap:+.2f} dB: "
                    "more trials would likely move it again")
        if self.winner is None:
            return f"a tie: the gap {self.gap:+.2f} dB is within seed noise ({TIE_DB} dB)"
        return f"{self.winner} ahead by {abs(self.gap):.2f} dB; the last {LAST_SHARE:.0%} of the trials did not move it"


def comparison_floor(budget: int, min_fraction: float, d_in: int, d_out: int) -> int:
    """The smallest size at which both families can have a model: where comparing them starts."""
    return max(int(min_fraction * budget), *(space.smallest(f, d_in, d_out).params for f in FAMILIES))


def budget_grid(budget: int, lo: int) -> list[int]:
    """BUDGET_STEPS budgets, log-spaced above lo (comparison_floor: where the larger family's smallest model
    sits, too few models to compare) up to the budget."""
    if lo >= budget:
        return [budget]
    ratio = (budget / max(1, lo)) ** (1 / BUDGET_STEPS)
    return sorted({int(round(lo * ratio**k)) for k in range(1, BUDGET_STEPS)} | {budget})


def best_within(points: Sequence[Point], budget: int) -> float | None:
    """The best PSNR of a model of at most `budget` parameters, or None when there is none."""
    within = [psnr for params, psnr in points if params <= budget and math.isfinite(psnr)]
    return max(within) if within else None


def gap_at(points: dict[str, Sequence[Point]], budget: int) -> float | None:
    """Best Hourglass minus best conventional within the budget (None unless both have a model)."""
    h, c = (best_within(points.get(f, ()), budget) for f in ("hourglass", "conventional"))
    return None if h is None or c is None else h - c


def verdicts(points: dict[str, Sequence[Point]], budgets: Sequence[int], *, last_share: float = LAST_SHARE,
             improve_db: float = IMPROVE_DB, min_trials: int = MIN_TRIALS, halves: bool = HALVES) -> list[Verdict]:
    """The verdict at each budget; points[family]: its COMPLETE trials in the order they finished.

    last_share, improve_db, min_trials and halves are the rule's knobs (bench/search_quality.py compares
    values). halves: the answers of each family's odd and even trials, two searches of half the size,
    must agree too (a search whose halves disagree has not found its answer yet).
    """
    earlier = {f: list(p)[: len(p) - math.ceil(last_share * len(p))] for f, p in points.items()}
    odd, even = ({f: list(p)[k::2] for f, p in points.items()} for k in (0, 1))
    out = []
    for b in budgets:
        counts = {f: sum(params <= b for params, _ in p) for f, p in points.items()}
        gap, before = gap_at(points, b), gap_at(earlier, b)
        if gap is None:
            state = "one family"
        elif min(counts.values()) < min_trials:
            state = "few trials"
        elif (before is None or abs(gap - before) > MOVE_DB or _side(gap) != _side(before)
              or any(_gain(points[f], earlier[f], b) > improve_db for f in points)
              or (halves and not _agree(gap_at(odd, b), gap_at(even, b)))):
            state = "unsettled"
        else:
            state = "settled"
        out.append(Verdict(b, state, gap, before, counts, (gap_at(odd, b), gap_at(even, b))))
    return out


def points_of(trials: Sequence[FrozenTrial]) -> list[Point]:
    """A family's COMPLETE trials as (parameters, validation PSNR), in the order they finished."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    done.sort(key=lambda t: (t.datetime_complete.timestamp() if t.datetime_complete else math.inf, t.number))
    return [(int(t.values[0]), float(t.values[1])) for t in done]


def _gain(now: Sequence[Point], before: Sequence[Point], budget: int) -> float:
    """How much a family's best within the budget rose over the last trials (inf when it had none before)."""
    a, b = best_within(now, budget), best_within(before, budget)
    return math.inf if b is None else (0.0 if a is None else a - b)


def _agree(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= MOVE_DB and _side(a) == _side(b)


def _side(gap: float) -> int:
    """Which family the gap favours: +1 Hourglass, -1 conventional, 0 a tie within seed noise."""
    return 0 if abs(gap) <= TIE_DB else (1 if gap > 0 else -1)


def is_settled(vs: Sequence[Verdict]) -> bool:
    """True when every budget where both families compete is settled (and at least one is)."""
    compared = [v for v in vs if v.state != "one family"]
    return bool(compared) and all(v.state == "settled" for v in compared)
