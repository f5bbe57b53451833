"""The search space: every sampled configuration fits the budget by construction, and spreads over it."""

import math

import numpy as np
import optuna
import pytest

from hgsearch.errors import UsageError
from hgsearch.models import build, count_module_params
from hgsearch.paper import FRONTIERS
from hgsearch.space import SpaceConfig, realize, sample, size_range, smallest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sampled(family, budget, d_in, n=300, seed=0):
    """Specs drawn through a real Optuna study. What is tested is the space (fit by construction, spread
    over the range), not TPE, so a seeded RandomSampler draws them: 300 TPE trials cost seconds each test."""
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    specs = []
    for _ in range(n):
        trial = study.ask()
        spec, lr = sample(trial, family, budget, d_in, 784, SpaceConfig(), False)
        specs.append((spec, lr))
        study.tell(trial, [spec.params, -abs(math.log(lr / 1e-3)) + spec.params / budget])
    return specs


@pytest.mark.parametrize("family,budget,d_in", [("hourglass", 5_000_000, 784), ("hourglass", 1_500_000, 196),
                                                ("hourglass", 3_000_000, 196), ("conventional", 5_000_000, 784),
                                                ("conventional", 3_000_000, 196)])
def test_every_sample_fits_and_spreads(family, budget, d_in):
    specs = sampled(family, budget, d_in)
    params = np.array([s.params for s, _ in specs])
    lo, hi = size_range(family, d_in, 784, budget, SpaceConfig())
    assert (params <= budget).all() and (params >= smallest(family, d_in, 784).params).all()
    assert all(5e-5 <= lr <= 5e-3 for _, lr in specs)
    # Spread: samples reach both the bottom and the top fifth of the log-size range.
    pos = (np.log(params) - math.log(lo)) / (math.log(hi) - math.log(lo))
    assert pos.min() < 0.2 and pos.max() > 0.8
    assert np.median(pos) < 0.8  # not piled up near the budget
    # Closed form == built module, checked on a handful of the sampled shapes.
    for spec, _ in specs[:: len(specs) // 5]:
        assert count_module_params(build(spec))[0] == spec.params


def test_hourglass_samples_span_ten_percent_to_budget():
    specs = sampled("hourglass", 20_000_000, 784, n=200)
    params = np.array([s.params for s, _ in specs])
    assert params.min() < 0.2 * 20_000_000 and params.max() > 0.8 * 20_000_000
    assert min(s.depth for s, _ in specs) == 1 and max(s.depth for s, _ in specs) >= 30
    ratios = [s.bottleneck / s.width for s, _ in specs]
    assert min(ratios) < 0.01 and max(ratios) > 0.5


@pytest.mark.parametrize("task,family,points", [(t, f, p) for t, fams in FRONTIERS.items() for f, p in fams.items()])
def test_paper_frontier_configs_are_reachable(task, family, points):
    d_in = 196 if task == "superres" else 784
    space = SpaceConfig()
    depth_range = space.hourglass_depth if family == "hourglass" else space.conventional_depth
    for params, _psnr, (width, d_h, depth) in points:
        exact = width * d_in + 784 * width + 2 * depth * width * d_h
        assert depth_range[0] <= depth <= depth_range[1]
        if family == "hourglass":
            assert space.ratio[0] <= d_h / width <= space.ratio[1]
        spec = realize(family, exact, depth, d_h / width, d_in, 784)
        # Rounding down may cost one unit of width or bottleneck, never more.
        assert spec.depth == depth and abs(spec.width - width) <= 1
        assert abs(spec.bottleneck - d_h) <= 1 and spec.params <= exact


def test_realize_never_exceeds_target():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        family = rng.choice(["hourglass", "conventional"])
        d_in = int(rng.choice([196, 784, 768]))
        floor = smallest(family, d_in, 784).params
        target = int(floor * math.exp(rng.uniform(0, 3)))
        spec = realize(family, target, int(rng.integers(1, 49)), float(rng.uniform(0.004, 0.9)), d_in, 784)
        assert floor <= spec.params <= target


def test_infeasible_budget():
    assert size_range("conventional", 784, 784, 2_000_000, SpaceConfig()) is None
    assert size_range("hourglass", 784, 784, 2_000_000, SpaceConfig()) is not None
    with pytest.raises(UsageError):
        realize("hourglass", 1_000_000, 1, 0.1, 784, 784)
