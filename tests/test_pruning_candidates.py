"""bench/pruning_candidates.py's rules on tiny hand-made curves: forecasts, per-trial margins and peer filters."""

import math

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def m():
    return load_bench("pruning_candidates")


def obs(m, key, params, curve):
    return m.Observation("conventional", key, params, tuple(curve))


def test_forecast_is_linear_in_log_epoch(m):
    # Epochs 1-3 at 10, 12, 13 dB: steepest step 2 dB / log 2, least squares (log-epoch slope) by hand.
    xs = [0.0, math.log(2), math.log(3)]
    mx = sum(xs) / 3
    slope = sum((x - mx) * (y - 35 / 3) for x, y in zip(xs, [10, 12, 13], strict=True)) / sum((x - mx) ** 2 for x in xs)
    assert m.forecast([10, 12, 13], 9, 3, optimistic=True) == pytest.approx(13 + 2 / math.log(2) * math.log(3))
    assert m.forecast([10, 12, 13], 9, 3, optimistic=False) == pytest.approx(13 + slope * math.log(3))
    assert m.forecast([10, 9], 9, 3, optimistic=True) == 9  # a falling curve is not forecast lower
    assert m.forecast([10], 9, 3, optimistic=True) == 10


def test_candidates_change_only_what_the_pruner_is_given(m):
    # Three small peers 1 dB ahead of a large newcomer at epoch 1: the default stops it.
    peers = [obs(m, k, 100_000 * (k + 1), [20.0 + 0.1 * k]) for k in range(3)]
    me = obs(m, 9, 900_000, [19.0])
    base = m.Pruner("pareto-asha", 1, 3, 9, 0.5, 3)
    lr = {("conventional", k): 5e-4 for k in range(3)} | {("conventional", 9): 2e-3}
    assert base.decide(me, 1, peers).stop
    assert not m.LrMargin(base, lr, 5e-4, 0.5).decide(me, 1, peers).stop  # 2 doublings: margin 1.5 dB
    assert m.LrMargin(base, lr, 5e-4, 0.2).decide(me, 1, peers).stop  # margin 0.9 dB
    assert not m.LrPeers(base, lr, 2.0).decide(me, 1, peers).stop  # no peer within x2: no quorum
    assert m.LrPeers(base, lr, 4.0).decide(me, 1, peers).stop
    assert m.NoiseMargin(base, 100.0).decide(me, 1, peers).stop  # one point: no noise, the base margin
    assert not m.Extrapolate(base, 3).decide(me, 1, peers).stop  # one point: no forecast, it continues


def test_extrapolation_stops_only_when_the_optimistic_forecast_is_beaten(m):
    # Three smaller peers finished at 25 dB. At the epoch-3 rung a flat newcomer (optimistic forecast 16 +
    # 0.5 / log 1.5 x log 3 = 17.4 dB) is stopped; a steep one (21 + 3 / log 1.5 x log 3 = 29.1 dB) continues,
    # though its epoch-3 PSNR trails the peers' epoch-3 PSNR (24 dB) by 3 dB: the default stops it.
    peers = [obs(m, k, 100_000 * (k + 1), [24.0] * 2 + [24.0] + [25.0] * 6) for k in range(3)]
    base = m.Pruner("pareto-asha", 1, 3, 9, 0.5, 3)
    flat, steep = obs(m, 8, 900_000, [15.0, 15.5, 16.0]), obs(m, 9, 900_000, [15.0, 18.0, 21.0])
    assert m.Extrapolate(base, 3).decide(flat, 3, peers).stop
    assert not m.Extrapolate(base, 3).decide(steep, 3, peers).stop
    assert base.decide(steep, 3, peers).stop
