"""Rounds sized by the device: the round-time model, the planner, claims and memory, checked by hand."""

import itertools

import pytest
import torch

from hgsearch.model.families import ArchSpec
from hgsearch.training import packing
from hgsearch.training.packing import (
    CPU_PACK,
    RoundModel,
    member_bytes,
    plan_round,
    round_claim,
    split_rounds,
    step_kernels,
)

D_IN, D_OUT = 196, 784  # MNIST x2 super-resolution
NARROW = ArchSpec("hourglass", D_IN, D_OUT, 785, 2, 44)  # 785*196 + 784*785 + 2*44*785*2 = 907,460 params
WIDE = ArchSpec("conventional", D_IN, D_OUT, 784, 3000, 2)  # 784*196 + 784*784 + 2*2*784*3000 = 10,176,320
MODEL = RoundModel(kernel_s=3e-6, bandwidth=3e12, compiled=False, streams=4)


def test_step_kernels_fit_the_counted_ops():
    """bench/RESULTS.md (issue 21): ops per step of the 20-trial sample's packs, fused AdamW, eager and compiled."""
    counted = {(6, 1): (67, 44), (2, 1): (63, 40), (5, 3): (140, 71), (4, 7): (287, 126), (1, 8): (321, 137),
               (2, 44): (1654, 642)}
    for (k, depth), (eager, compiled) in counted.items():
        assert (step_kernels(k, depth), step_kernels(k, depth, compiled=True)) == (eager, compiled)


def brute_force(specs, model, max_packs):
    """The least round time over every partition of the specs into at most max_packs packs."""
    best = float("inf")
    n = len(specs)
    for labels in itertools.product(range(max_packs), repeat=n):
        packs = [[i for i in range(n) if labels[i] == b] for b in range(max_packs)]
        best = min(best, model.round_time(specs, [p for p in packs if p]))
    return best


def test_the_deep_narrow_pair_is_split_when_a_stream_is_spare():
    """Two narrow depth-44 models and two wide depth-2 ones. The depth-44 pair is the round's critical
    path: its step is 24 + 2 + 37 x 44 = 1,654 kernels (4.962 ms at 3 us) plus 2 x 907,460 x 40 bytes
    (0.0242 ms at 3 TB/s). Alone, each narrow model's chain is 1,653 kernels (4.959 ms) + 0.0121 ms =
    4.9711 ms, so with a stream spare the planner splits the pair; the wide models' pack, (24 + 2 + 74)
    kernels (0.300 ms) + 2 x 10,176,320 x 40 bytes (0.2714 ms), and the round's total traffic (0.2956 ms)
    stay below it. Merging a wide model into the deep pack would pad it to 785/3000/44 (208M parameters:
    2.8 ms of traffic per member): never."""
    specs = [NARROW, WIDE, NARROW, WIDE]
    packs = plan_round(specs, 4, model=MODEL)
    assert sorted(map(sorted, packs)) == [[0], [1, 3], [2]]
    narrow_alone = (24 + 1 + 37 * 44) * 3e-6 + 907_460 * 40 / 3e12
    assert narrow_alone == pytest.approx(4.97110e-3, rel=1e-5)
    assert MODEL.round_time(specs, packs) == pytest.approx(narrow_alone)
    assert MODEL.round_time(specs, packs) == pytest.approx(brute_force(specs, MODEL, 4))
    # The wide pair's own chain and the total traffic, by hand, are below the critical path.
    assert MODEL.chain(2, 10_176_320, 2) == pytest.approx(100 * 3e-6 + 2 * 10_176_320 * 40 / 3e12)
    assert MODEL.chain(2, 10_176_320, 2) < narrow_alone

    # With two streams only, the pair shares a pack (1,654 kernels + its traffic: 4.9862 ms) and the
    # wide models the other: the best of every 2-pack partition.
    two = RoundModel(kernel_s=3e-6, bandwidth=3e12, streams=2)
    packs = plan_round(specs, 4, model=two)
    assert sorted(map(sorted, packs)) == [[0, 2], [1, 3]]
    pair = (24 + 2 + 37 * 44) * 3e-6 + 2 * 907_460 * 40 / 3e12
    assert two.round_time(specs, packs) == pytest.approx(pair) == pytest.approx(brute_force(specs, two, 2))


def test_when_traffic_dominates_packs_avoid_padding():
    """At a tiny per-kernel cost the round is its traffic: padding is all that costs, so unlike shapes
    are not packed together (waste 0), while like shapes may share a pack for free."""
    cheap = RoundModel(kernel_s=1e-9, bandwidth=3e12, streams=8)
    specs = [NARROW, WIDE, NARROW, WIDE, ArchSpec("hourglass", D_IN, D_OUT, 900, 64, 8)]
    packs = plan_round(specs, 4, model=cheap)
    assert packing.padding_waste(specs, packs) == 0.0
    assert cheap.round_time(specs, packs) == pytest.approx(sum(s.params for s in specs) * 40 / 3e12, rel=1e-3)


def test_planner_respects_pack_size_and_memory():
    specs = [ArchSpec("hourglass", D_IN, D_OUT, 800 + i, 8, 1 + i % 3) for i in range(10)]
    packs = plan_round(specs, 3, model=RoundModel(streams=2))  # 10 members need 4 packs of 3 at most
    assert sorted(i for p in packs for i in p) == list(range(10)) and max(map(len, packs)) <= 3
    one = member_bytes([specs[0]], 128)
    packs = plan_round(specs, 8, max_bytes=2 * one)  # memory allows about one member per pack
    assert sorted(i for p in packs for i in p) == list(range(10))
    assert all(len(p) * member_bytes([specs[i] for i in p]) <= 2 * one or len(p) == 1 for p in packs)


def test_rounds_fit_memory_and_claims_fill_it(monkeypatch):
    specs = [NARROW, WIDE, NARROW, WIDE]
    packs = [[0, 2], [1], [3]]
    need = {tuple(p): len(p) * member_bytes([specs[i] for i in p]) for p in packs}
    assert split_rounds(specs, packs, None) == [packs]
    # Room for the deep pair and one wide member: the other wide one goes to a second round.
    rounds = split_rounds(specs, packs, need[(0, 2)] + need[(1,)])
    assert rounds == [[[0, 2], [1]], [[3]]]
    assert round_claim(torch.device("cpu"), 5_000_000) == CPU_PACK
    assert round_claim(torch.device("cpu"), 5_000_000, 3) == 3
    monkeypatch.setattr(packing, "pack_limits", lambda device, override=None: (override or 128, 10 * 2**30))
    # 10 GiB / (32 bytes x 5M parameters) = 67 members of the budget's size; a 100k budget hits MAX_ROUND.
    assert round_claim(torch.device("cuda"), 5_000_000) == 10 * 2**30 // (32 * 5_000_000) == 67
    assert round_claim(torch.device("cuda"), 100_000) == packing.MAX_ROUND
    assert round_claim(torch.device("cuda"), 5_000_000, 8) == 8
