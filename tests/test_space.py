"""The search space: every sampled configuration fits the budget by construction, and spreads over it."""

import math

import numpy as np
import optuna
import pytest

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.data.tasks import load_task
from hgsearch.errors import StudyMismatchError, UsageError
from hgsearch.model.families import build, count_module_params
from hgsearch.model.space import bottleneck, decode, depth_range, sample, size_range, smallest, width_range
from hgsearch.results.paper import FRONTIERS
from hgsearch.search import identity
from hgsearch.store import schema

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


def random_draws(family, budget, d_in, n, seed=0):
    """(trial params, spec) pairs drawn by a seeded RandomSampler: fast, and uniform over every position."""
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        spec = sample(trial, family, budget, d_in, 784, SpaceConfig(), False)[0]
        out.append((trial.params, spec))
        study.tell(trial, [0.0, 0.0])
    return out


GEOMETRIES = [("hourglass", 3_000_000, 196), ("hourglass", 1_500_000, 784), ("hourglass", 20_000_000, 784),
              ("conventional", 3_000_000, 196), ("conventional", 8_000_000, 784)]


@pytest.mark.parametrize("family,budget,d_in", GEOMETRIES)
def test_every_draw_is_trained_as_sampled(family, budget, d_in):
    """What the sampler is told is what is trained: the sampled depth exactly, the (Hourglass) width the
    sampled position stands for exactly, and the largest bottleneck that keeps the parameter count within
    the sampled size, so `target - 2*depth*width < params <= target`; d_h / d_z then lies in space.ratio.
    Version 1 raised the width to the image size or lowered the depth after sampling (the clamp): there
    the trained depth differed from the sampled one on 64% of conventional draws at 3M."""
    space = SpaceConfig()
    for params, spec in random_draws(family, budget, d_in, 1000):
        target, depth, width = decode(family, params, budget, d_in, 784, space)
        assert (spec.depth, spec.width) == (params["depth"], width) == (depth, width)
        assert target - 2 * depth * width < spec.params <= target <= budget
        if family == "hourglass":
            assert space.ratio[0] <= spec.bottleneck / spec.width <= space.ratio[1]
            assert spec.width >= 785
        else:
            assert spec.width == 784 and spec.bottleneck >= 785


def test_hourglass_width_floor_is_drawn_often_and_the_width_spreads():
    draws = random_draws("hourglass", 3_000_000, 196, 1000)
    widths = np.array([s.width for _, s in draws])
    # The image-size floor d_z = d_x + 1 is a value of its own, not a clamp: about one draw in eight.
    assert 0.05 < (widths == 785).mean() < 0.3
    assert widths.max() > 2000 and np.median(widths) < 1000  # log scale of the excess over the floor
    depths = np.array([s.depth for _, s in draws])
    assert depths.min() == 1 and depths.max() >= 40
    # Deep models reach down to the floor too (the paper's small Hourglass frontiers: 785 units, L=10+).
    assert ((widths == 785) & (depths >= 10)).any()


def test_a_position_maps_to_each_width_monotonically():
    space = SpaceConfig()
    params = {"depth": 4, "size": 0.5}
    widths = [decode("hourglass", {**params, "width_pos": u}, 3_000_000, 196, 784, space)[2]
              for u in np.linspace(0, 1, 4001)]
    lo, hi = width_range(decode("hourglass", {**params, "width_pos": 0.0}, 3_000_000, 196, 784, space)[0], 4, 196,
                         784, space)
    assert widths == sorted(widths) and widths[0] == lo and widths[-1] == hi


@pytest.mark.parametrize("task,family,points", [(t, f, p) for t, fams in FRONTIERS.items() for f, p in fams.items()])
def test_paper_frontier_configs_are_reachable(task, family, points):
    """Each paper configuration is the exact decoding of some sampled point, at a budget of its own size."""
    d_in = 196 if task == "superres" else 784
    space = SpaceConfig()
    for _params, _psnr, (width, d_h, depth) in points:
        exact = width * d_in + 784 * width + 2 * depth * width * d_h
        lo, hi = depth_range(family, exact, d_in, 784, space)
        assert lo <= depth <= hi
        pos = {"depth": depth, "size": 1.0}  # the top of the size range is the budget itself
        if family == "hourglass":
            w_lo, w_hi = width_range(exact, depth, d_in, 784, space)
            assert w_lo <= width <= w_hi
            # The middle (on the log axis) of the position interval that picks this width.
            pos["width_pos"] = math.log(width - w_lo + 1.5) / math.log(w_hi - w_lo + 2)
        assert decode(family, pos, exact, d_in, 784, space) == (exact, depth, width)
        assert bottleneck(exact, depth, width, d_in, 784) == d_h


def test_infeasible_budget():
    assert size_range("conventional", 784, 784, 2_000_000, SpaceConfig()) is None
    assert size_range("hourglass", 784, 784, 2_000_000, SpaceConfig()) is not None
    trial = optuna.create_study().ask()
    with pytest.raises(UsageError, match="cannot fit a budget"):
        sample(trial, "hourglass", 1_000_000, 784, 784, SpaceConfig(), False)


def test_a_study_of_the_old_parametrisation_is_not_resumed(tiny_idx, tmp_path):
    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", study="s",
                    results_dir=str(tmp_path / "results"))
    data = load_task(cfg)
    old = {k: v for k, v in identity.settings(cfg, data, "hourglass").items() if k != "space_version"}
    identity.make_study_dir(cfg)
    study = optuna.create_study(study_name=schema.family_study_name("s", "hourglass"), storage=cfg.storage_url,
                                directions=schema.DIRECTIONS)
    study.set_user_attr(schema.SETTINGS_KEY, old)
    with pytest.raises(StudyMismatchError, match=r"space_version \(study: 1, now: 2\)"):
        identity.open_studies(cfg, ["hourglass"], data)
