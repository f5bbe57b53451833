"""Search space: the only place that calls trial.suggest_*; a trial becomes a frozen ArchSpec.

Every sampled point is a feasible configuration and is trained exactly as sampled: no width or depth
is raised or lowered after the sampler chose it (SPACE_VERSION 2; version 1 clamped them). A trial
samples, all from distributions fixed for the study:
- depth: an integer on a log scale, up to the deepest model that fits the budget;
- size: a position in [0, 1] on a log parameter axis between the smallest model of that depth (or
  `min_fraction` of the budget, whichever is larger) and the budget;
- (Hourglass only) width: a position in [0, 1] over the stream widths that keep d_h / d_z inside
  `ratio` for that size and depth, on a log scale of the excess over the narrowest one, so the image
  size floor d_z = d_x + 1 (where the paper's Hourglass frontiers sit) is drawn with positive
  probability;
- a learning rate.
The bottleneck is then the largest that keeps the parameter count within the target size: it is the
only rounded quantity, so a trial's parameters are at most the target and less than one unit of
bottleneck (2 * depth * width parameters) below it.
"""

from __future__ import annotations

import math

import optuna

from hgsearch.config import SpaceConfig
from hgsearch.errors import UsageError
from hgsearch.model.families import FAMILIES, ArchSpec, param_count

# Part of the settings that define a study (search.identity.settings): a study sampled with another version
# of this parametrisation is not resumed with this one.
SPACE_VERSION = 2


def stream_width(d_in: int, d_out: int) -> int:
    """d_x, the image size: the conventional stream width, and the floor of the Hourglass one."""
    return max(d_in, d_out)


def smallest(family: str, d_in: int, d_out: int, fixed_win: bool = False) -> ArchSpec:
    """The smallest configuration a family allows on this geometry."""
    d_x = stream_width(d_in, d_out)
    if family == "hourglass":
        return ArchSpec(family, d_in, d_out, d_x + 1, 1, 1, fixed_win)
    return ArchSpec(family, d_in, d_out, d_x, d_x + 1, 1, fixed_win)


def _narrowest(family: str, d_in: int, d_out: int, space: SpaceConfig) -> tuple[int, int]:
    """(stream width, smallest bottleneck) of the family's narrowest configuration in this space."""
    d_x = stream_width(d_in, d_out)
    if family == "hourglass":
        w0 = d_x + 1
        d_h = max(1, math.ceil(space.ratio[0] * w0))
        if d_h > space.ratio[1] * w0:
            raise UsageError(f"space.ratio {list(space.ratio)} holds no bottleneck at width {w0}: widen it")
        return w0, d_h
    return d_x, d_x + 1


def _floor(family: str, depth: int, d_in: int, d_out: int, space: SpaceConfig) -> int:
    """Parameters of the smallest configuration of this depth in the space."""
    w0, d_h = _narrowest(family, d_in, d_out, space)
    return param_count(d_in, d_out, w0, d_h, depth)


def depth_range(family: str, budget: int, d_in: int, d_out: int, space: SpaceConfig) -> tuple[int, int] | None:
    """Depths whose smallest configuration fits the budget, or None if not even the shallowest does."""
    lo, hi = space.hourglass_depth if family == "hourglass" else space.conventional_depth
    w0, d_h = _narrowest(family, d_in, d_out, space)
    # families.param_count solved for depth: (budget - W_in - W_out) // (parameters of one block).
    deepest = min(hi, (budget - param_count(d_in, d_out, w0, d_h, 0)) // (2 * w0 * d_h))
    return (lo, deepest) if deepest >= lo else None


def size_range(family: str, d_in: int, d_out: int, budget: int, space: SpaceConfig,
               depth: int | None = None) -> tuple[int, int] | None:
    """Target parameter counts sampled at this depth (default: the shallowest), or None if none fits."""
    depths = depth_range(family, budget, d_in, d_out, space)
    if depths is None:
        return None
    floor = _floor(family, depths[0] if depth is None else depth, d_in, d_out, space)
    return (max(floor, int(space.min_fraction * budget)), budget) if floor <= budget else None


def bottleneck(target: int, depth: int, width: int, d_in: int, d_out: int) -> int:
    """The largest bottleneck whose parameter count, at this depth and width, is <= target."""
    # families.param_count solved for the bottleneck (it is linear in it): one unit adds 2 * depth * width.
    return (target - param_count(d_in, d_out, width, 0, depth)) // (2 * depth * width)


def width_range(target: int, depth: int, d_in: int, d_out: int, space: SpaceConfig) -> tuple[int, int]:
    """Hourglass stream widths whose bottleneck at this target and depth keeps d_h / d_z in space.ratio.

    d_h / d_z falls as the width grows (the blocks get fewer parameters each, spread over more units),
    so the widths form one interval: from the floor d_x + 1, or the width where the ratio drops to its
    high end, to the width where it reaches its low end (or d_h reaches 1).
    """
    outer = d_in + d_out
    r_lo, r_hi = space.ratio

    def ratio(w: int) -> float:
        return bottleneck(target, depth, w, d_in, d_out) / w

    def root(r: float) -> float:
        # The width where the unrounded ratio is r: families.param_count with bottleneck r*w, solved for w
        # (2*L*r*w^2 + outer*w = target).
        a = 2 * depth * r
        return (-outer + math.sqrt(outer * outer + 4 * a * target)) / (2 * a)

    # Start from the closed-form roots and step over the rounding of d_h (a step or two at most).
    lo = max(stream_width(d_in, d_out) + 1, math.ceil(root(r_hi)) - 1)
    while ratio(lo) > r_hi:
        lo += 1
    # target // (outer + 2 * depth): the widest stream with a bottleneck of 1 (param_count solved for width).
    hi = min(int(root(r_lo)) + 1, target // (outer + 2 * depth))
    while hi >= lo and (ratio(hi) < r_lo or bottleneck(target, depth, hi, d_in, d_out) < 1):
        hi -= 1
    if hi < lo:
        raise UsageError(f"no Hourglass width fits {target:,} parameters at depth {depth} with space.ratio "
                         f"{list(space.ratio)}: widen space.ratio")
    return lo, hi


def _log_pick(u: float, lo: int, hi: int) -> int:
    """The integer in [lo, hi] at position u in [0, 1] of a log axis; k gets mass log((k+1)/k) / log((hi+1)/lo)."""
    return min(hi, int(math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo)))))


def decode(family: str, params: dict[str, float], budget: int, d_in: int, d_out: int,
           space: SpaceConfig) -> tuple[int, int, int]:
    """(target size, depth, stream width) that a trial's sampled parameters stand for."""
    d_x = stream_width(d_in, d_out)
    depth = int(params["depth"])
    rng = size_range(family, d_in, d_out, budget, space, depth)
    if rng is None:
        raise UsageError(f"{family} at depth {depth} cannot fit a budget of {budget:,} parameters")
    lo, hi = rng
    # Uniform positions spread trials evenly over orders of magnitude of model size.
    target = int(round(math.exp(math.log(lo) + params["size"] * (math.log(hi) - math.log(lo)))))
    target = min(max(target, lo), hi)
    if family != "hourglass":
        return target, depth, d_x  # the conventional stream width is the image size
    w_lo, w_hi = width_range(target, depth, d_in, d_out, space)
    return target, depth, w_lo - 1 + _log_pick(params["width_pos"], 1, w_hi - w_lo + 1)


def sample(
    trial: optuna.Trial, family: str, budget: int, d_in: int, d_out: int, space: SpaceConfig, fixed_win: bool
) -> tuple[ArchSpec, float]:
    """Draw one configuration and learning rate from the trial; within the budget, trained as drawn."""
    depths = depth_range(family, budget, d_in, d_out, space)
    if depths is None:
        raise UsageError(f"{family} cannot fit a budget of {budget:,} parameters")
    # Every distribution is fixed for the study (budget and geometry are study settings), so
    # multivariate TPE models one joint space; the ranges that depend on other draws are covered by
    # positions in [0, 1] instead.
    params = {"depth": trial.suggest_int("depth", *depths, log=True), "size": trial.suggest_float("size", 0.0, 1.0)}
    if family == "hourglass":
        params["width_pos"] = trial.suggest_float("width_pos", 0.0, 1.0)
    lr = trial.suggest_float("lr", *space.lr, log=True)
    target, depth, width = decode(family, params, budget, d_in, d_out, space)
    spec = ArchSpec(family, d_in, d_out, width, bottleneck(target, depth, width, d_in, d_out), depth, fixed_win)
    assert spec.params <= target, (spec, target)  # the closed form guarantees it; guard the algebra
    return spec, lr


__all__ = ["FAMILIES", "SPACE_VERSION", "SpaceConfig", "bottleneck", "decode", "depth_range", "sample",
           "size_range", "smallest", "stream_width", "width_range"]
