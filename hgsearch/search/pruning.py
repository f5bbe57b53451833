"""Early stopping for the two-objective search: asynchronous successive halving on Pareto structure.

Parameters are exact before training; only validation PSNR is uncertain and still rising. So a trial
is stopped at a rung (epochs min_epochs * eta^k below the last epoch) only when three things hold:
  1. the rung has at least `min_peers` other trials of its family (the earliest trials always run);
  2. some peer with no more parameters beats its PSNR at that rung by more than `margin` dB (a trial
     on the rung's non-dominated set, or within evaluation noise of it, is never stopped: this is
     what makes a new trial that dominates every recorded one safe, unlike MOASHA's ranking);
  3. it is outside the best ceil(n / eta) of the n rung trials under the chosen rule:
     - "pareto-asha": non-dominated sorting (front rank), ties by higher PSNR;
     - "psnr-bins": PSNR rank among the trials in its log-spaced parameter bin.
Everything is a pure function of the trial and the recorded curves of its family, so every worker
and host that reads the same storage decides alike, and a replay of recorded curves (bench/) runs
the exact code the search runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hgsearch.errors import UsageError
from hgsearch.names import PRUNING_RULES as RULES
from hgsearch.training.record import dominates

BIN_FACTOR = 2.0  # psnr-bins: one bin per factor of 2 in parameters


@dataclass(frozen=True)
class Observation:
    """One trial as the pruner sees it: its family, key (trial number), size and learning curve."""

    family: str
    key: int
    params: int
    curve: tuple[float, ...]  # validation PSNR after epoch 1, 2, ...


@dataclass(frozen=True)
class Decision:
    """stop=True ends the trial now; reason is a line for trials.csv (empty when it continues)."""

    stop: bool
    reason: str = ""


KEEP = Decision(False)


def rung_epochs(min_epochs: int, reduction_factor: int, max_epochs: int) -> tuple[int, ...]:
    """Decision epochs min_epochs * eta^k, strictly below max_epochs (the last epoch decides nothing)."""
    if min_epochs < 1 or reduction_factor < 2:
        raise UsageError(f"pruning needs min_epochs >= 1 and reduction_factor >= 2, "
                         f"got {min_epochs} and {reduction_factor}")
    out, e = [], min_epochs
    while e < max_epochs:
        out.append(e)
        e *= reduction_factor
    return tuple(out)


def front_ranks(points: Sequence[tuple[int, float]]) -> list[int]:
    """Non-dominated sorting: 0 for the Pareto front, 1 for the front once 0 is removed, and so on."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


@dataclass(frozen=True)
class Pruner:
    """The stopping rule and its settings; `decide` is what the per-epoch hook calls."""

    rule: str = "pareto-asha"
    min_epochs: int = 1
    reduction_factor: int = 3
    max_epochs: int = 9
    margin: float = 0.5  # dB a no-larger peer must lead by: covers curve crossings, not just eval noise
    min_peers: int = 3  # never stop a trial at a rung with fewer recorded peers of its family

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UsageError(f"unknown pruning rule {self.rule!r}: use one of {', '.join(RULES)}")
        if self.min_peers < 1 or self.margin < 0:
            raise UsageError(f"pruning needs min_peers >= 1 and margin >= 0, got {self.min_peers} and {self.margin}")
        rung_epochs(self.min_epochs, self.reduction_factor, self.max_epochs)  # validates both

    @property
    def rungs(self) -> tuple[int, ...]:
        return () if self.rule == "none" else rung_epochs(self.min_epochs, self.reduction_factor, self.max_epochs)

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        """Stop or continue `trial` after `epoch` (its curve holds at least that many epochs)."""
        if epoch not in self.rungs:
            return KEEP
        psnr = trial.curve[epoch - 1]
        peers = [o for o in recorded
                 if o.family == trial.family and o.key != trial.key and len(o.curve) >= epoch]
        if self.rule == "psnr-bins":
            peers = [o for o in peers if _bin(o.params) == _bin(trial.params)]
        if len(peers) < self.min_peers:
            return KEEP
        me = (trial.params, psnr)
        better = [o for o in peers if dominates((o.params, o.curve[epoch - 1]), me, self.margin)]
        if not better:
            return KEEP
        # Rank everyone at this rung; sort keys end with the trial key so ties break the same way
        # on every worker, whatever order the storage returned the trials in.
        everyone = sorted([*peers, trial], key=lambda o: o.key)
        pts = [(o.params, o.curve[epoch - 1]) for o in everyone]
        primary = front_ranks(pts) if self.rule == "pareto-asha" else [0] * len(pts)
        order = sorted(range(len(everyone)), key=lambda i: (primary[i], -pts[i][1], everyone[i].key))
        keep = math.ceil(len(everyone) / self.reduction_factor)
        position = order.index(everyone.index(trial))
        if position < keep:
            return KEEP
        best = max(better, key=lambda o: (o.curve[epoch - 1], -o.key))
        where = f"front {primary[order[position]] + 1}, " if self.rule == "pareto-asha" else "its size bin, "
        return Decision(True, f"stopped after epoch {epoch}: {psnr:.2f} dB, outside the best {keep} of "
                              f"{len(everyone)} at this rung ({where}rank {position + 1}); trial {best.key} "
                              f"with {best.params:,} parameters had {best.curve[epoch - 1]:.2f} dB")


def _bin(params: int) -> int:
    return math.floor(math.log(params) / math.log(BIN_FACTOR))
