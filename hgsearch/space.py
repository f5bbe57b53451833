"""Search space: the only place that calls trial.suggest_*; a trial becomes a frozen ArchSpec.

Every sampled configuration fits the budget by construction. A trial samples a target size on a
log scale between the family's smallest feasible model (or `min_fraction` of the budget, whichever
is larger) and the budget, a depth, (Hourglass only) a bottleneck/width ratio, and a learning rate.
`realize` then solves the closed-form parameter count for the widths, rounding down, so the
result never exceeds the target. Sampling the size directly spreads trials over the whole
parameter axis instead of piling them up near the budget, which is what a frontier needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

from hgsearch.errors import UsageError
from hgsearch.models import FAMILIES, ArchSpec, param_count


@dataclass(frozen=True)
class SpaceConfig:
    """Ranges of the search space; the defaults cover every configuration on the paper's frontiers."""

    hourglass_depth: tuple[int, int] = (1, 48)  # paper: 1 to 45 blocks
    conventional_depth: tuple[int, int] = (1, 8)  # paper: 1 to 5 blocks
    ratio: tuple[float, float] = (0.004, 0.9)  # Hourglass d_h / d_z; paper frontiers 0.005 to 0.45
    lr: tuple[float, float] = (5e-5, 5e-3)  # paper: about 5e-5 to 5e-3
    min_fraction: float = 0.1  # smallest target size, as a fraction of the budget

    def __post_init__(self) -> None:
        for name in ("hourglass_depth", "conventional_depth", "ratio", "lr"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise UsageError(f"space.{name} must be [low, high] with 0 < low <= high, got {[lo, hi]}")
            object.__setattr__(self, name, (type(lo)(lo), type(hi)(hi)))
        if self.ratio[1] >= 1:
            raise UsageError("space.ratio high must be < 1: Hourglass needs bottleneck < width")
        if not 0 < self.min_fraction <= 1:
            raise UsageError(f"space.min_fraction must be in (0, 1], got {self.min_fraction}")


def stream_width(d_in: int, d_out: int) -> int:
    """d_x, the image size: the conventional stream width, and the floor of the Hourglass one."""
    return max(d_in, d_out)


def smallest(family: str, d_in: int, d_out: int, fixed_win: bool = False) -> ArchSpec:
    """The smallest configuration a family allows on this geometry."""
    d_x = stream_width(d_in, d_out)
    if family == "hourglass":
        return ArchSpec(family, d_in, d_out, d_x + 1, 1, 1, fixed_win)
    return ArchSpec(family, d_in, d_out, d_x, d_x + 1, 1, fixed_win)


def size_range(family: str, d_in: int, d_out: int, budget: int, space: SpaceConfig) -> tuple[int, int] | None:
    """Range of target parameter counts a family samples from, or None if it cannot fit the budget."""
    floor = smallest(family, d_in, d_out).params
    if floor > budget:
        return None
    return max(floor, int(space.min_fraction * budget)), budget


def realize(
    family: str, target: int, depth: int, ratio: float, d_in: int, d_out: int, fixed_win: bool = False
) -> ArchSpec:
    """Largest configuration of the given shape whose parameter count is <= target (closed form).

    When the shape cannot reach down to the target (too deep for the size), the bottleneck and then
    the depth are reduced, so the result is always feasible as long as target >= smallest().
    """
    d_x = stream_width(d_in, d_out)
    if target < smallest(family, d_in, d_out).params:
        raise UsageError(f"{family}: target {target:,} is below the smallest model")
    outer = d_in + d_out  # W_in and W_out cost this many parameters per unit of width

    if family == "hourglass":
        # Solve 2*L*r*w^2 + outer*w = target for the stream width w, then round down.
        a = 2 * depth * ratio
        width = int((-outer + math.sqrt(outer * outer + 4 * a * target)) / (2 * a))
        width = max(width, d_x + 1)
        bottleneck = min(max(1, int(ratio * width)), width - 1)
        lo_branch = 1
    else:
        width = d_x
        bottleneck = max(d_x + 1, (target - width * outer) // (2 * depth * width))
        lo_branch = d_x + 1

    if param_count(d_in, d_out, width, bottleneck, depth) > target:
        # The stream alone eats the target: shrink the branch, then the depth, to fit.
        room = target - width * outer
        bottleneck = room // (2 * depth * width)
        if bottleneck < lo_branch:
            depth = max(1, room // (2 * width * lo_branch))
            bottleneck = room // (2 * depth * width)
        if family == "hourglass":
            bottleneck = min(bottleneck, width - 1)
    spec = ArchSpec(family, d_in, d_out, width, bottleneck, depth, fixed_win)
    assert spec.params <= target, (spec, target)  # the closed form guarantees it; guard the algebra
    return spec


def sample(
    trial: optuna.Trial, family: str, budget: int, d_in: int, d_out: int, space: SpaceConfig, fixed_win: bool
) -> tuple[ArchSpec, float]:
    """Draw one configuration and learning rate from the trial; always within the budget."""
    rng = size_range(family, d_in, d_out, budget, space)
    if rng is None:
        raise UsageError(f"{family} cannot fit a budget of {budget:,} parameters")
    lo, hi = rng
    # Position on a log parameter axis between lo and hi: uniform here means trials spread evenly
    # over orders of magnitude of model size.
    size = trial.suggest_float("size", 0.0, 1.0)
    target = int(round(math.exp(math.log(lo) + size * (math.log(hi) - math.log(lo)))))
    target = min(max(target, lo), hi)
    if family == "hourglass":
        depth = trial.suggest_int("depth", *space.hourglass_depth, log=True)
        ratio = trial.suggest_float("ratio", *space.ratio, log=True)
    else:
        depth = trial.suggest_int("depth", *space.conventional_depth, log=True)
        ratio = 0.0  # unused: the conventional stream width is fixed at the image size
    lr = trial.suggest_float("lr", *space.lr, log=True)
    return realize(family, target, depth, ratio, d_in, d_out, fixed_win), lr


__all__ = ["FAMILIES", "SpaceConfig", "realize", "sample", "size_range", "smallest", "stream_width"]
