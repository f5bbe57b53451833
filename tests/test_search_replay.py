"""bench/search_replay.py on a tiny synthetic table: a dominated trial is stopped, compute and hypervolume by hand."""


import pytest

from tests.conftest import load_bench


def config(m, key, params, final, epochs=9, start=20.0):
    """A rising curve from `start` to `final` dB; test PSNR = final."""
    curve = tuple(start + (final - start) * e / epochs for e in range(1, epochs + 1))
    return m.Config("hourglass", key, params, 4, 900, 1e-3, curve, final, final)


@pytest.fixture(scope="module")
def m():
    return load_bench("search_replay")


def test_dominated_trial_is_stopped_and_hypervolume_is_exact(m):
    a, b, c = config(m, 0, 100_000, 25.0), config(m, 1, 200_000, 26.0), config(m, 2, 300_000, 27.0)
    d = config(m, 3, 400_000, 21.0, start=19.0)  # larger and behind all three by > 0.5 dB from epoch 1
    full = m.replay_order([a, b, c, d], [0, 1, 2, 3], None)
    stopped = m.replay_order([a, b, c, d], [0, 1, 2, 3],
                             m.Pruner("pareto-asha", 1, 3, 9, 0.5, 3))  # RunConfig's defaults
    assert [s for s, _ in full] == [9, 18, 27, 36]
    assert [s for s, _ in stopped] == [9, 18, 27, 28] and stopped[-1][1] is None  # d stopped after epoch 1
    ref = (1_000_000.0, 19.0)
    # By hand: strips 100k-200k at 6 dB, 200k-300k at 7 dB, 300k-1M at 8 dB.
    assert m.hv_at([stopped], 28, ref) == pytest.approx(0.6e6 + 0.7e6 + 5.6e6)
    assert m.hv_at([stopped], 26, ref) == pytest.approx(0.6e6 + 8.0e5 * 7)  # c not finished yet: a, b only
    assert m.to_reach([stopped], 6.9e6, ref) == 27
    assert m.to_reach([stopped, full], 6.9e6, ref) == 2 * 27  # two families split the compute equally


def test_tpe_uses_each_table_configuration_once(m):
    space = m.TableSpace("hourglass", 3_000_000, 196, 784)
    cs = [m.Config("hourglass", k, 400_000 + 150_000 * k, 1 + k % 5, 785 + 50 * k, 1e-4 * (1 + k),
                   tuple(20.0 + 0.1 * k * e for e in range(1, 4)), 20 + 0.3 * k, 20 + 0.3 * k) for k in range(14)]
    traj = m.replay_tpe(cs, 0, None, space)
    assert [s for s, _ in traj] == [3 * (i + 1) for i in range(14)]
    assert sorted(p for _, p in traj) == sorted((c.params, c.psnr_test) for c in cs)


def test_oracle_stops_exactly_what_ends_dominated_whatever_its_curve(m):
    # b starts far behind a (a late bloomer) but ends ahead: the oracle keeps it; c ends behind a: stopped
    # at the first rung, however good its start. The real pruner (3 peers needed) could stop neither.
    a = config(m, 0, 100_000, 25.0)
    b = config(m, 1, 200_000, 26.0, start=10.0)
    c = config(m, 2, 300_000, 24.0, start=30.0)
    traj = m.replay_order([a, b, c], [0, 1, 2], m.Oracle([a, b, c], 3))
    assert [s for s, _ in traj] == [9, 18, 21]
    assert [p for _, p in traj] == [(100_000, 25.0), (200_000, 26.0), None]


def test_survival_counts_the_best_model_and_front_points_that_finish(m):
    # d ends best but starts far behind (a late bloomer): stopped after epoch 1 when it comes last, kept when it
    # comes first (the first trials always run). e is dominated by c at the end: never on the front.
    a, b, c = config(m, 0, 100_000, 25.0), config(m, 1, 200_000, 26.0), config(m, 2, 300_000, 27.0)
    d = config(m, 3, 400_000, 28.0, start=10.0)
    e = config(m, 4, 350_000, 24.0)
    cs = [a, b, c, d, e]
    best, front = m.targets(cs)
    assert best is d and sorted(x.key for x in front) == [0, 1, 2, 3]
    pruner = m.Pruner("pareto-asha", 1, 3, 9, 0.5, 3)
    late = m.replay_order(cs, [0, 1, 2, 4, 3], pruner)
    first = m.replay_order(cs, [3, 0, 1, 2, 4], pruner)
    assert [x for x, _ in late] == [9, 18, 27, 30, 31]  # e stopped after epoch 3 (c leads by 1 dB), d after 1
    assert m.survival(cs, late) == (False, 3, 4)
    assert m.survival(cs, first) == (True, 4, 4)
