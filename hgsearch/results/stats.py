"""The statistics of a search's results as pure functions of trial rows (pandas in, numbers out).

"The frontier" means one of two things in hgsearch, each with one name and one home:
- the *Pareto set* of a family: the trials Optuna's `study.best_trials` returns, single runs judged on
  validation PSNR (results.trials.Frontier.frontier, written to frontier.csv);
- the *means frontier* (`means_frontier` here; `means_frontiers` for every family): the paper's rule on
  seed means, i.e. mean over seeds, best learning rate per shape, then the upper envelope
  (`pareto_front`). The comparison, the gaps and the report's tables are made on this one
  (Analysis.front, frontier_means.csv).
Before `hgsearch confirm` each configuration has one seed, so the two differ mainly where one shape
finished with several learning rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from hgsearch.errors import UsageError

# Rows sharing these values are seeds of one configuration (lr included: the paper picks the best
# learning rate per shape only after averaging over seeds).
CONFIG_KEYS = ["family", "depth", "width", "bottleneck", "lr", "fixed_win"]
SHAPE_KEYS = ["family", "depth", "width", "bottleneck", "fixed_win"]

# Budgets at which the gap is reported, log-spaced from the smallest model to the budget: enough rows to
# show how the gap moves with the budget, few enough for one table on a terminal.
N_BINS = 6

MILLION = 1e6  # hypervolumes take x in millions of parameters, so they read in dB x M params

# Student t quantile by bisection on the integrated density (t_quantile):
T_MAX = 1e3  # the upper end of the bracket: dof >= 1 keeps the 0.9995 quantile below 640
T_GRID = 4001  # trapezoid points from 0 to t: the cdf within 1e-8 (measured for dof 1-30)
T_HALVINGS = 60  # bisection steps: 1e3 / 2**60 is below float precision


def _require(df: pd.DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        cols = ", ".join(missing)
        raise UsageError(f"results lack column(s) {cols}: pass trial rows as results.trials reads them (trials.csv)")


def pareto_front(df: pd.DataFrame, x: str = "params", y: str = "psnr_val") -> pd.DataFrame:
    """The paper's upper envelope: by ascending x, keep a row only if its y beats every smaller one.

    Rows with a missing y (failed trials) are ignored. Among rows tied in x only the best y can
    stay, and a later row must be strictly better, so equal-PSNR larger models are dropped. This
    is the set of non-dominated points (minimise x, maximise y), duplicates collapsed to one row.
    """
    _require(df, [x, y])
    rows = df.dropna(subset=[y]).sort_values([x, y], ascending=[True, False], kind="stable")
    best = rows[y].cummax().shift(fill_value=-np.inf)
    return rows[rows[y] > best].reset_index(drop=True)


def hypervolume(front_xy, ref: tuple[float, float]) -> float:
    """Area dominated by the points (x minimised, y maximised) and bounded by ref = (ref_x, ref_y).

    The region is {(u, v): some point has x <= u <= ref_x and ref_y <= v <= y}; points with
    x > ref_x or y < ref_y add nothing. Units are those of x times those of y. Any point set
    works: dominated points lie inside the others' area and add nothing either.
    """
    pts = np.asarray(front_xy, dtype=float).reshape(-1, 2)
    ref_x, ref_y = ref
    pts = pts[(pts[:, 0] <= ref_x) & (pts[:, 1] >= ref_y)]
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]  # by x, best y first within ties
    area, best_y = 0.0, ref_y
    # Left to right, the strip from one point's x to the next is covered up to the best y so far.
    edges = np.append(pts[:, 0], ref_x)
    for (x, y), next_x in zip(pts, edges[1:], strict=True):
        best_y = max(best_y, y)
        area += (next_x - x) * (best_y - ref_y)
    return float(area)


def shared_reference(
    dfs: list[pd.DataFrame],
    budget: float,
    *,
    baseline_psnr: float | None = None,
    y: str = "psnr_val",
) -> tuple[float, float]:
    """One reference point for every family: (budget, the trivial baseline's y, else a floor).

    With a baseline (bicubic upsampling, the noisy input, the nearest class prototype) ref_y is the
    baseline: a model below it has learned nothing and earns no hypervolume. Without one, ref_y is
    the lowest frontier point of any family rounded down to a whole dB, so no point falls outside.
    Both families are always measured from the same point.
    """
    lows = [means_frontier(df[df["params"] <= budget], y)[y].min() for df in dfs if len(df)]
    lows = [v for v in lows if not pd.isna(v)]
    if not lows:
        raise UsageError(f"no finished trial within the budget {budget:g}: run the study longer")
    ref_y = math.floor(min(lows)) if baseline_psnr is None else baseline_psnr
    return float(budget), float(ref_y)


def dominated_fraction(
    front_a: pd.DataFrame, front_b: pd.DataFrame, x: str = "params", y: str = "psnr_val"
) -> float:
    """Fraction of A's points that some point of B dominates; NaN when A is empty.

    b dominates a when b.x <= a.x and b.y >= a.y with at least one strict (Pareto dominance), so
    identical fronts give 0, not 1.
    """
    if len(front_a) == 0:
        return math.nan
    ax, ay = front_a[x].to_numpy(float)[:, None], front_a[y].to_numpy(float)[:, None]
    bx, by = front_b[x].to_numpy(float)[None, :], front_b[y].to_numpy(float)[None, :]
    dom = (bx <= ax) & (by >= ay) & ((bx < ax) | (by > ay))
    return float(dom.any(axis=1).mean())


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (CONFIG_KEYS): mean, std and count over seeds of psnr_test and psnr_val.

    The means keep the names psnr_test / psnr_val so the result feeds pareto_front directly; std is NaN
    for a single seed. Every row is one seed, whether or not a seed column says which.
    """
    _require(df, CONFIG_KEYS + ["params", "trainable_params", "psnr_test", "psnr_val"])
    g = df.groupby(CONFIG_KEYS, dropna=False, sort=True)
    out = g[["params", "trainable_params"]].first()
    out["psnr_test"], out["psnr_test_std"] = g["psnr_test"].mean(), g["psnr_test"].std()
    out["psnr_val"], out["psnr_val_std"] = g["psnr_val"].mean(), g["psnr_val"].std()
    out["n_seeds"] = g["psnr_val"].count()  # finished seeds only: a failed seed is not a result
    return out.reset_index()


def best_lr(means: pd.DataFrame, y: str = "psnr_val") -> pd.DataFrame:
    """Per shape (SHAPE_KEYS), the learning rate with the best mean y: the paper's rule."""
    means = means.dropna(subset=[y])
    idx = means.groupby(SHAPE_KEYS, dropna=False)[y].idxmax()
    return means.loc[idx.to_numpy()].sort_values("params").reset_index(drop=True)


def means_frontier(df: pd.DataFrame, y: str = "psnr_val") -> pd.DataFrame:
    """The means frontier of one family's rows: mean over seeds, best lr per shape, then the upper envelope."""
    return pareto_front(best_lr(seed_means(df), y), y=y)


def t_quantile(p: float, dof: float) -> float:
    """Student t quantile for p > 0.5, by bisection on the integrated density (no scipy needed)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def cdf(t: float) -> float:
        u = np.linspace(0.0, t, T_GRID)
        return 0.5 + float(np.trapezoid(c * (1 + u * u / dof) ** (-(dof + 1) / 2), u))

    lo, hi = 0.0, T_MAX
    for _ in range(T_HALVINGS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float] | None:
    """Welch t-interval for mean(a) - mean(b) from per-seed values; None with < 2 seeds a side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    gap = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return (float(gap), float(gap))
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = t_quantile(0.5 + level / 2, dof) * math.sqrt(va + vb)
    return (float(gap - half), float(gap + half))


@dataclass(frozen=True)
class BinGap:
    """The PSNR gap at one budget: the best model of each family with params <= hi."""

    lo: float  # bin edges in parameters; the gap is evaluated at hi
    hi: float
    hourglass: float | None  # best mean y among hourglass configurations with params <= hi
    conventional: float | None
    gap: float | None  # hourglass - conventional in dB; None when a family has no model in reach
    ci: tuple[float, float] | None  # 95% Welch interval on gap; None with < 2 seeds on a side
    hourglass_params: int | None
    conventional_params: int | None


def budget_edges(lo: float, budget: float, n_bins: int) -> np.ndarray:
    """n_bins + 1 log-spaced edges from lo to budget."""
    if n_bins < 1 or not 0 < lo <= budget:
        raise UsageError(
            f"bins need n_bins >= 1 and 0 < smallest model <= budget,"
            f" got n_bins={n_bins}, smallest={lo:g}, budget={budget:g}"
        )
    return np.geomspace(lo, budget, n_bins + 1)


def _best_at(configs: pd.DataFrame, hi: float, y: str) -> pd.Series | None:
    reach = configs[configs["params"] <= hi]
    return None if reach.empty else reach.loc[reach[y].idxmax()]


def _seed_values(df: pd.DataFrame, config: pd.Series, y: str) -> np.ndarray:
    mask = np.ones(len(df), bool)
    for k in CONFIG_KEYS:
        col = df[k]
        mask &= (col == config[k]).to_numpy() | (col.isna().to_numpy() & pd.isna(config[k]))
    return df.loc[mask, y].dropna().to_numpy(float)


def _min_params(dfs: list[pd.DataFrame], min_params: float | None, y: str) -> float:
    if min_params is not None:
        return float(min_params)
    # Smallest finished model: a failed trial must not stretch the bins down to empty ones.
    sizes = [df.dropna(subset=[y])["params"].min() for df in dfs]
    sizes = [v for v in sizes if not pd.isna(v)]
    if not sizes:
        raise UsageError("no trials to bin: run the study first")
    return float(min(sizes))


def bin_gaps(
    hourglass: pd.DataFrame,
    conventional: pd.DataFrame,
    budget: float,
    *,
    n_bins: int = N_BINS,
    min_params: float | None = None,
    y: str = "psnr_val",
) -> list[BinGap]:
    """Gap hourglass - conventional at each of n_bins log-spaced budgets up to `budget`.

    A bin answers "what is the gap at budget hi": each family's best configuration (mean over
    seeds, best lr) among all models with params <= hi, i.e. the frontier's value at hi. This
    is monotone in the budget and never empty once a family has any smaller model, unlike the best
    model strictly inside the bin. Edges start at min_params (default: either family's smallest).
    """
    dfs = [hourglass, conventional]
    edges = budget_edges(_min_params(dfs, min_params, y), budget, n_bins)
    configs = [best_lr(seed_means(df), y) for df in dfs]
    gaps = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        best = [_best_at(c, hi, y) for c in configs]
        vals = [None if b is None else float(b[y]) for b in best]
        gap, ci = None, None
        if best[0] is not None and best[1] is not None:
            gap = vals[0] - vals[1]
            ci = welch_interval(*(_seed_values(df, b, y) for df, b in zip(dfs, best, strict=True)))
        sizes = [None if b is None else int(b["params"]) for b in best]
        gaps.append(BinGap(float(lo), float(hi), vals[0], vals[1], gap, ci, sizes[0], sizes[1]))
    return gaps


def scaling_pattern(
    df: pd.DataFrame,
    budget: float,
    n_bins: int = N_BINS,
    *,
    min_params: float | None = None,
    y: str = "psnr_val",
) -> pd.DataFrame:
    """Per budget bin and family, the shape of the best configuration with params <= bin top."""
    edges = budget_edges(_min_params([df], min_params, y), budget, n_bins)
    rows = []
    for family, part in df.groupby("family", sort=True):
        configs = best_lr(seed_means(part), y)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            b = _best_at(configs, hi, y)
            if b is not None:
                rows.append({
                    "family": family, "lo": lo, "hi": hi, "depth": int(b["depth"]),
                    "width": int(b["width"]), "bottleneck": int(b["bottleneck"]),
                    "ratio": b["bottleneck"] / b["width"], "params": int(b["params"]),
                    "lr": float(b["lr"]), "psnr_test": float(b["psnr_test"]),
                    "psnr_val": float(b["psnr_val"]),
                })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Comparison:
    """Everything summary.json says about hourglass vs conventional at one budget."""

    budget: float
    y: str  # the PSNR column compared (psnr_val: the one used for selection)
    reference: tuple[float, float]  # (params, dB) bounding the hypervolume
    reference_rule: str
    hv_hourglass: float  # dB x million params
    hv_conventional: float
    hv_difference: float  # hourglass - conventional
    # The same on the parameter range both families reach: from the larger of the two fronts' smallest
    # models to the budget. A family that cannot build small models (conventional's stream is the image
    # size, so its smallest shape has ~d_x*(d_in+d_out)+2*d_x^2 parameters) gets no hypervolume below its
    # floor, which the whole-range difference counts against it; this one compares like with like.
    shared_from: float | None  # params where the shared range starts; None when a family has no front
    hv_shared_hourglass: float | None
    hv_shared_conventional: float | None
    hv_shared_difference: float | None
    front_sizes: tuple[int, int]  # (hourglass, conventional) frontier points within budget
    hourglass_dominated: float  # fraction of the hourglass front dominated by the conventional one
    conventional_dominated: float  # and the other way round
    bins: tuple[BinGap, ...]

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, NaN becomes None."""
        return json_ready(asdict(self))


def compare(
    df: pd.DataFrame,
    budget: float,
    *,
    reference: tuple[float, float] | None = None,
    baseline_psnr: float | None = None,
    n_bins: int = N_BINS,
    y: str = "psnr_val",
) -> Comparison:
    """Compare the families' frontiers (paper's rule, params <= budget) in df's trial rows.

    reference = (params, dB) is used as given; otherwise shared_reference(budget, baseline_psnr).
    Hypervolumes use x in millions of parameters, so they read in dB x M params.
    """
    _require(df, ["family"])
    parts = [df[df["family"] == f] for f in ("hourglass", "conventional")]
    fronts = [means_frontier(p[p["params"] <= budget], y) for p in parts]
    if reference is None:
        reference = shared_reference(parts, budget, baseline_psnr=baseline_psnr, y=y)
        rule = ("x = budget; y = the trivial baseline's PSNR" if baseline_psnr is not None
                else "x = budget; y = lowest frontier PSNR of either family floored to 1 dB")
    else:
        rule = "given"
    ref_m = (reference[0] / MILLION, reference[1])
    hv = [hypervolume(np.c_[f["params"] / MILLION, f[y]], ref_m) for f in fronts]
    shared_from, hv_shared = None, [None, None]
    if all(len(f) for f in fronts):
        shared_from = float(max(f["params"].min() for f in fronts))
        # A point left of the range still covers the range at its height: moving it to the range's
        # start keeps exactly its area inside the range and drops the rest.
        hv_shared = [hypervolume(np.c_[np.maximum(f["params"], shared_from) / MILLION, f[y]], ref_m) for f in fronts]
    return Comparison(
        budget=float(budget), y=y, reference=(float(reference[0]), float(reference[1])),
        reference_rule=rule, hv_hourglass=hv[0], hv_conventional=hv[1], hv_difference=hv[0] - hv[1],
        shared_from=shared_from, hv_shared_hourglass=hv_shared[0], hv_shared_conventional=hv_shared[1],
        hv_shared_difference=None if shared_from is None else hv_shared[0] - hv_shared[1],
        front_sizes=(len(fronts[0]), len(fronts[1])),
        hourglass_dominated=dominated_fraction(fronts[0], fronts[1], y=y),
        conventional_dominated=dominated_fraction(fronts[1], fronts[0], y=y),
        bins=tuple(bin_gaps(*parts, budget, n_bins=n_bins, y=y)),
    )


def means_frontiers(rows: pd.DataFrame) -> pd.DataFrame:
    """The means frontier (means_frontier) of each family, stacked."""
    parts = [means_frontier(part) for _, part in rows.groupby("family", sort=True)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else means_frontier(rows)


def json_ready(v: Any) -> Any:
    """A value json.dumps writes as strict JSON: numpy scalars become Python ones, NaN and inf None,
    tuples lists, dict keys strings (summary.json, Comparison.to_dict, the report's provenance)."""
    if isinstance(v, dict):
        return {str(k): json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    return v
