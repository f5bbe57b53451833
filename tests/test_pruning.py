"""The two-objective pruner: never stops what no peer dominates, stops the clearly dominated."""

from __future__ import annotations

import random

import pytest

from hgsearch.errors import UsageError
from hgsearch.search.pruning import Observation, Pruner, front_ranks, rung_epochs
from hgsearch.training.record import dominates


def obs(key: int, params: int, *curve: float, family: str = "hourglass") -> Observation:
    return Observation(family, key, params, tuple(curve))


# Eight recorded trials at rung 1: small models and larger, better ones (a clean front).
PEERS = [obs(k, 1_000_000 + 100_000 * k, 20.0 + 0.2 * k) for k in range(8)]


def test_rungs_are_geometric_and_below_the_last_epoch():
    assert rung_epochs(1, 3, 9) == (1, 3)
    assert rung_epochs(1, 3, 10) == (1, 3, 9)
    assert rung_epochs(2, 2, 20) == (2, 4, 8, 16)
    assert rung_epochs(5, 3, 5) == ()
    with pytest.raises(UsageError):
        rung_epochs(0, 3, 9)
    with pytest.raises(UsageError):
        Pruner(rule="median")


def test_front_ranks():
    pts = [(1, 10.0), (2, 12.0), (2, 11.0), (3, 11.5), (1, 9.0)]
    assert front_ranks(pts) == [0, 0, 1, 1, 1]
    assert dominates((1, 10.0), (1, 9.0)) and not dominates((1, 10.0), (1, 10.0))
    assert not dominates((1, 10.0), (2, 9.95), margin=0.1) and dominates((1, 10.0), (2, 9.8), margin=0.1)


@pytest.mark.parametrize("rule", ["pareto-asha", "psnr-bins"])
def test_a_new_trial_that_dominates_everything_is_never_stopped(rule):
    # MOASHA's failure: the newcomer is smaller and better than every recorded trial.
    new = obs(99, 900_000, 25.0)
    assert not Pruner(rule, min_peers=1).decide(new, 1, PEERS).stop


@pytest.mark.parametrize("rule", ["pareto-asha", "psnr-bins"])
def test_a_trial_no_peer_dominates_is_never_stopped(rule):
    # Fuzz: random rungs; whenever no peer is no larger and better by more than the margin, keep.
    rng = random.Random(1)
    pruner = Pruner(rule, min_peers=1, margin=0.1)
    checked = 0
    for _ in range(300):
        peers = [obs(k, rng.randrange(10**5, 10**7), rng.uniform(15, 25)) for k in range(rng.randrange(1, 12))]
        me = obs(100, rng.randrange(10**5, 10**7), rng.uniform(15, 25))
        undominated = not any(dominates((p.params, p.curve[0]), (me.params, me.curve[0]), 0.1) for p in peers)
        if undominated:
            assert not pruner.decide(me, 1, peers).stop
            checked += 1
    # The claim is checked only on undominated draws: too few of them and the test proves nothing.
    assert checked >= 100, f"only {checked} of 300 draws were undominated"  # 105 with this seed


@pytest.mark.parametrize("rule", ["pareto-asha", "psnr-bins"])
def test_a_clearly_dominated_trial_is_stopped_with_a_reason(rule):
    # As large as the largest peer and 3 dB worse than every one of them.
    loser = obs(99, 1_700_000, 17.0)
    d = Pruner(rule, min_peers=2).decide(loser, 1, PEERS)
    assert d.stop
    assert "epoch 1" in d.reason and "17.00 dB" in d.reason


def test_dominated_but_within_the_margin_continues():
    peers = [obs(k, 1_000_000, 20.0) for k in range(6)]
    near = obs(99, 1_500_000, 19.8)
    assert not Pruner(margin=0.25, min_peers=2).decide(near, 1, peers).stop
    assert Pruner(margin=0.1, min_peers=2).decide(near, 1, peers).stop


def test_only_rung_epochs_decide():
    loser = obs(99, 1_700_000, 17.0, 17.1, 17.2)
    pruner = Pruner(min_epochs=1, reduction_factor=3, max_epochs=9, min_peers=2)
    peers = [obs(p.key, p.params, *([p.curve[0]] * 3)) for p in PEERS]
    assert pruner.decide(loser, 2, peers) == Pruner().decide(loser, 2, peers) == pruner.decide(loser, 2, [])
    assert not pruner.decide(loser, 2, peers).stop
    assert pruner.decide(loser, 3, peers).stop
    assert not Pruner(rule="none").decide(loser, 1, peers).stop


def test_few_peers_never_prune():
    loser = obs(99, 1_700_000, 17.0)
    assert not Pruner(min_peers=9).decide(loser, 1, PEERS).stop  # 8 peers < 9
    assert Pruner(min_peers=8).decide(loser, 1, PEERS).stop
    # Peers that have not reached the rung do not count.
    assert not Pruner(min_peers=2).decide(obs(99, 1_700_000, 17.0, 17.0, 17.0), 3, PEERS).stop


def test_families_are_judged_separately():
    loser = obs(99, 1_700_000, 17.0, family="conventional")
    assert not Pruner(min_peers=2).decide(loser, 1, PEERS).stop  # PEERS are all hourglass
    twins = [obs(p.key, p.params, *p.curve, family="conventional") for p in PEERS]
    assert Pruner(min_peers=2).decide(loser, 1, PEERS + twins).stop


def test_the_trial_own_record_is_not_its_peer():
    me = obs(3, 1_300_000, 17.0)
    others = [p for p in PEERS if p.key != 3]
    pruner = Pruner(min_peers=8)  # 7 others: too few, however often the trial itself is listed
    assert not pruner.decide(me, 1, others).stop
    assert pruner.decide(me, 1, others + [me]) == pruner.decide(me, 1, others)


@pytest.mark.parametrize("rule", ["pareto-asha", "psnr-bins"])
def test_decisions_do_not_depend_on_storage_order(rule):
    rng = random.Random(2)
    pruner = Pruner(rule, min_peers=2, margin=0.1)
    for _ in range(100):
        peers = [obs(k, rng.randrange(10**5, 10**7), rng.uniform(15, 25)) for k in range(10)]
        me = obs(100, rng.randrange(10**5, 10**7), rng.uniform(15, 25))
        first = pruner.decide(me, 1, peers)
        for _ in range(3):
            rng.shuffle(peers)
            assert pruner.decide(me, 1, peers) == first


def test_halving_keeps_the_top_third():
    # Ten equal-size peers on a PSNR ladder: with eta=3 the best ceil(11/3) = 4 of 11 continue.
    peers = [obs(k, 1_000_000, 20.0 + k) for k in range(10)]
    pruner = Pruner(min_peers=2, margin=0.0)
    stops = [pruner.decide(obs(99, 1_000_000, 19.5 + k), 1, peers).stop for k in range(11)]
    assert stops == [True] * 7 + [False] * 4
