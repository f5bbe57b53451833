"""Known-answer tests for the frontier analysis and the published MNIST frontiers."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from hgsearch.errors import UsageError
from hgsearch.results.paper import FRONTIERS, published_front
from hgsearch.results.stats import (
    BinGap,
    best_lr,
    bin_gaps,
    compare,
    dominated_fraction,
    hypervolume,
    pareto_front,
    scaling_pattern,
    seed_means,
    shared_reference,
    t_quantile,
    welch_interval,
)


def rows(family: str, points, lr: float = 1e-3, seed: int | None = None) -> pd.DataFrame:
    """Trial rows from (params, psnr_val) or (params, psnr_val, depth, width, bottleneck)."""
    out = []
    for i, p in enumerate(points):
        params, val = p[0], p[1]
        depth, width, bottleneck = p[2:] if len(p) > 2 else (i + 1, 800 + i, 10 + i)
        out.append({
            "family": family, "params": params, "trainable_params": params, "psnr_test": val - 0.1,
            "psnr_val": val, "depth": depth, "width": width, "bottleneck": bottleneck, "lr": lr,
            "fixed_win": False, "trial": i,
        })
    df = pd.DataFrame(out)
    if seed is not None:
        df["seed"] = seed
    return df


# --- Pareto rule ---------------------------------------------------------------------------------

def test_pareto_front_drops_dominated_and_ties():
    df = rows("hourglass", [(100, 20.0), (200, 19.0), (200, 25.0), (300, 25.0), (400, 30.0),
                            (50, float("nan"))])
    front = pareto_front(df)
    # (200, 19) loses the tie in params, (300, 25) does not beat the smaller (200, 25), NaN is a
    # failed trial.
    assert list(zip(front["params"], front["psnr_val"], strict=True)) == [(100, 20.0), (200, 25.0), (400, 30.0)]


def test_pareto_front_matches_optuna_best_trials():
    def objective(trial):
        # Small integer grids make ties in both objectives likely; y is not monotone in p.
        p = trial.suggest_int("p", 1, 30)
        q = trial.suggest_int("q", 0, 10)
        return float(p), float(q + p // 5 - (p % 7 == 0) * 3)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(objective, n_trials=200)
    df = pd.DataFrame([{"params": t.values[0], "psnr_val": t.values[1]} for t in study.trials])
    ours = set(zip(pareto_front(df)["params"], pareto_front(df)["psnr_val"], strict=True))
    theirs = {tuple(t.values) for t in study.best_trials}
    assert len(ours) > 3
    assert ours == theirs
    # We keep one row per point; Optuna keeps every trial that reached it.
    assert len(pareto_front(df)) == len(ours) <= len(study.best_trials)


# --- hypervolume ---------------------------------------------------------------------------------

REF = (10.0, 0.0)


def test_hypervolume_one_point():
    # Rectangle from x=2 to 10, y=0 to 5: 8 * 5.
    assert hypervolume([(2, 5)], REF) == pytest.approx(40.0)


def test_hypervolume_two_points():
    # x 2..6 at height 5 (20) + x 6..10 at height 8 (32).
    assert hypervolume([(6, 8), (2, 5)], REF) == pytest.approx(52.0)


def test_hypervolume_three_points_and_dominated_point():
    # x 2..6 at 5 (20) + 6..8 at 8 (16) + 8..10 at 9 (18); (7, 6) is dominated by (6, 8).
    pts = [(2, 5), (6, 8), (8, 9), (7, 6)]
    assert hypervolume(pts, REF) == pytest.approx(54.0)


def test_hypervolume_ignores_points_beyond_reference():
    # (12, 20) is bigger than ref_x, (3, -1) is worse than ref_y: neither adds area.
    assert hypervolume([(2, 5), (12, 20), (3, -1)], REF) == pytest.approx(40.0)
    assert hypervolume([(12, 20)], REF) == 0.0
    assert hypervolume(np.empty((0, 2)), REF) == 0.0


def test_shared_reference_floor_and_baseline():
    hg = rows("hourglass", [(100, 25.7), (300, 30.0), (2000, 10.0)])  # 2000 is over the budget
    cv = rows("conventional", [(200, 24.3), (400, 28.0)])
    assert shared_reference([hg, cv], 1000) == (1000.0, 24.0)
    assert shared_reference([hg, cv], 1000, baseline_psnr=22.5) == (1000.0, 22.5)
    # A baseline above the frontier floor wins: points under it earn nothing.
    assert shared_reference([hg, cv], 1000, baseline_psnr=26.0) == (1000.0, 26.0)
    with pytest.raises(UsageError):
        shared_reference([hg, cv], 50)


# --- domination ----------------------------------------------------------------------------------

def front(points) -> pd.DataFrame:
    return pd.DataFrame(points, columns=["params", "psnr_val"])


def test_dominated_fraction_known_answers():
    a = front([(1, 10.0), (2, 20.0)])
    # (1, 10) is beaten by (1, 11) at equal size; nothing in B reaches 20 with <= 2 params.
    assert dominated_fraction(a, front([(1, 11.0), (3, 30.0)])) == 0.5
    assert dominated_fraction(a, front([(0.5, 25.0)])) == 1.0
    assert dominated_fraction(a, front([(3, 30.0)])) == 0.0
    # Pareto dominance needs one strict inequality: identical fronts do not dominate each other.
    assert dominated_fraction(a, a) == 0.0
    assert dominated_fraction(a, front([])) == 0.0
    assert math.isnan(dominated_fraction(front([]), a))


# --- seeds ---------------------------------------------------------------------------------------

def test_seed_means_and_best_lr():
    # One shape (depth 2, width 800, bottleneck 10), two learning rates, three finished seeds each.
    def run(lr, seed, val):
        return rows("hourglass", [(100, val, 2, 800, 10)], lr=lr, seed=seed)

    # lr 3e-3 has the single best seed (33) but the worse mean (29), and one failed seed.
    df = pd.concat([run(1e-3, s, v) for s, v in enumerate([30, 31, 32])]
                   + [run(3e-3, s, v) for s, v in enumerate([33, 27, 27, float("nan")])])
    means = seed_means(df).set_index("lr")
    assert means.loc[1e-3, "psnr_val"] == pytest.approx(31.0)
    assert means.loc[1e-3, "psnr_val_std"] == pytest.approx(1.0)
    assert means.loc[1e-3, "n_seeds"] == 3
    assert means.loc[3e-3, "psnr_val"] == pytest.approx(29.0)
    assert means.loc[3e-3, "n_seeds"] == 3  # the failed (NaN) seed is not counted
    best = best_lr(seed_means(df))
    assert len(best) == 1 and best["lr"].iloc[0] == 1e-3


def test_seed_means_requires_columns():
    with pytest.raises(UsageError, match="lr"):
        seed_means(front([(1, 10.0)]))


@pytest.mark.parametrize("p,dof,expected", [(0.975, 1, 12.706), (0.975, 4, 2.776),
                                            (0.975, 30, 2.042), (0.95, 10, 1.812)])
def test_t_quantile_matches_tables(p, dof, expected):
    assert t_quantile(p, dof) == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_welch_interval_coverage_with_three_seeds():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(600):
        lo, hi = welch_interval(rng.normal(1.5, 0.3, 3), rng.normal(0.0, 0.5, 3))
        hits += lo <= 1.5 <= hi
    assert 0.92 <= hits / 600 <= 0.98
    assert welch_interval([1.0], [0.0, 1.0]) is None


def seeded(n_seeds: int, rng) -> tuple[pd.DataFrame, pd.DataFrame]:
    hg = pd.concat([rows("hourglass", [(500, v, 10, 785, 4)], seed=s)
                    for s, v in enumerate(rng.normal(30.0, 0.3, n_seeds))])
    cv = pd.concat([rows("conventional", [(900, v, 1, 784, 785)], seed=s)
                    for s, v in enumerate(rng.normal(28.5, 0.3, n_seeds))])
    return hg, cv


def test_bin_gap_ci_contains_true_gap_and_narrows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (3, 20):
        (g,) = bin_gaps(*seeded(n, rng), budget=1000, n_bins=1)
        assert g.ci[0] <= 1.5 <= g.ci[1]
        assert g.ci[0] <= g.gap <= g.ci[1]
        widths.append(g.ci[1] - g.ci[0])
    assert widths[1] < widths[0] / 2


# --- budget bins ---------------------------------------------------------------------------------

def test_bin_gaps_best_at_budget():
    hg = rows("hourglass", [(100, 20.0), (1000, 30.0)])
    cv = rows("conventional", [(500, 25.0), (1000, 28.0)])
    failed = rows("conventional", [(10, float("nan"))])  # must not move the first edge to 10
    low, high = bin_gaps(hg, pd.concat([cv, failed]), budget=1000, n_bins=2)  # edges 100, 316, 1000
    assert low.lo == pytest.approx(100) and low.hi == pytest.approx(1000**0.5 * 10)
    # No conventional model fits in 316 params: no gap rather than a made-up one.
    assert (low.hourglass, low.conventional, low.gap, low.ci) == (20.0, None, None, None)
    # A model exactly at the edge counts; single seeds give no interval.
    assert high == BinGap(low.hi, 1000.0, 30.0, 28.0, 2.0, None, 1000, 1000)


def test_bin_gaps_rejects_bad_bins():
    hg = rows("hourglass", [(100, 20.0)])
    with pytest.raises(UsageError):
        bin_gaps(hg, hg, budget=50)
    with pytest.raises(UsageError):
        bin_gaps(hg, hg, budget=1000, n_bins=0)


def test_scaling_pattern_picks_best_shape_per_budget():
    df = pd.concat([
        rows("hourglass", [(100, 20.0, 10, 785, 4), (150, 19.0, 2, 785, 8),
                           (1000, 30.0, 6, 785, 270)]),
        rows("conventional", [(500, 25.0, 1, 784, 785)]),
    ])
    pat = scaling_pattern(df, budget=1000, n_bins=2)
    hg = pat[pat["family"] == "hourglass"]
    assert hg["depth"].tolist() == [10, 6]
    assert hg["ratio"].tolist() == pytest.approx([4 / 785, 270 / 785])
    assert pat[pat["family"] == "conventional"]["params"].tolist() == [500]


# --- the whole comparison ------------------------------------------------------------------------

def test_shared_range_hypervolume_compares_only_where_both_families_have_models():
    # Hourglass has the only small model; on the range both reach, conventional's front is higher.
    df = pd.concat([rows("hourglass", [(200_000, 32.0)]), rows("conventional", [(600_000, 31.0), (800_000, 34.0)])])
    c = compare(df, budget=1_000_000, reference=(1_000_000, 30.0))
    assert c.hv_difference == pytest.approx(0.8 * 2 - (0.2 * 1 + 0.2 * 4))  # +0.6: hourglass "wins" overall
    assert c.shared_from == 600_000
    assert c.hv_shared_hourglass == pytest.approx(0.4 * 2)  # its 32 dB over 0.6M..1M
    assert c.hv_shared_difference == pytest.approx(0.8 - 1.0)  # -0.2: conventional wins where both exist
    one = compare(rows("hourglass", [(200_000, 32.0)]), budget=1_000_000, reference=(1_000_000, 30.0))
    assert one.shared_from is None and one.hv_shared_difference is None


def test_compare_known_answer_and_json():
    df = pd.concat([
        # The 2M-parameter model is over the budget and must not count.
        rows("hourglass", [(200_000, 30.0), (500_000, 32.0), (2_000_000, 40.0)]),
        rows("conventional", [(400_000, 29.0), (800_000, 31.5)]),
    ])
    c = compare(df, budget=1_000_000, n_bins=3)
    assert c.reference == (1_000_000.0, 29.0)  # floor of the worst frontier point, 29.0
    # In M params: hourglass 0.3 * (30-29) + 0.5 * (32-29) = 1.8; conventional 0.2 * 2.5 = 0.5.
    assert c.hv_hourglass == pytest.approx(1.8)
    assert c.hv_conventional == pytest.approx(0.5)
    assert c.hv_difference == pytest.approx(1.3)
    # From 400k (conventional's smallest): hourglass 0.1 * 1 + 0.5 * 3 = 1.6; conventional still 0.5.
    assert c.shared_from == 400_000
    assert (c.hv_shared_hourglass, c.hv_shared_conventional) == (pytest.approx(1.6), pytest.approx(0.5))
    assert c.hv_shared_difference == pytest.approx(1.1)
    assert c.front_sizes == (2, 2)
    assert (c.hourglass_dominated, c.conventional_dominated) == (0.0, 1.0)
    assert c.bins[-1].gap == pytest.approx(0.5)
    d = c.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["bins"][0]["conventional"] is None and d["reference"] == [1_000_000.0, 29.0]

    given = compare(df, budget=1_000_000, reference=(1_000_000, 28.0))
    assert given.reference_rule == "given"
    assert given.hv_hourglass == pytest.approx(0.3 * 2 + 0.5 * 4)


def test_compare_with_one_family_missing():
    c = compare(rows("hourglass", [(200_000, 30.0)]), budget=1_000_000, n_bins=2)
    assert c.hv_conventional == 0.0 and c.front_sizes == (1, 0)
    d = c.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["conventional_dominated"] is None and all(b["gap"] is None for b in d["bins"])


# --- published frontiers -------------------------------------------------------------------------

def closed_form(task: str, width: int, d_h: int, depth: int) -> int:
    d_in = 196 if task == "superres" else 784
    return width * d_in + 784 * width + 2 * depth * width * d_h


def test_published_params_match_closed_form():
    n = 0
    for task, families in FRONTIERS.items():
        for family, points in families.items():
            for millions, _, (width, d_h, depth) in points:
                if family == "conventional":
                    assert width == 784
                assert round(closed_form(task, width, d_h, depth) / 1e6, 3) == millions
                n += 1
        table = published_front(task)
        assert (table["params"] / 1e6).round(3).tolist() == table["params_published_m"].tolist()
    assert n == 18
    assert closed_form("classify", 785, 4, 10) == 1_293_680  # PAPER.md's check


def test_published_frontiers_are_upper_envelopes():
    for task in FRONTIERS:
        table = published_front(task)
        for _, part in table.groupby("family"):
            assert len(pareto_front(part, y="psnr_test")) == len(part)
    with pytest.raises(UsageError):
        published_front("denoising")
