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


DEEP_WIDE = ArchSpec("hourglass", D_IN, D_OUT, 1500, 400, 44)  # 1500*196 + 784*1500 + 2*44*1500*400 = 54,270,000


def partitions(n, max_packs):
    for labels in itertools.product(range(max_packs), repeat=n):
        packs = [[i for i in range(n) if labels[i] == b] for b in range(max_packs)]
        yield [p for p in packs if p]


def test_a_deep_pack_is_split_only_when_that_lowers_the_round_time():
    """Two narrow depth-44 models, two wide depth-2 ones and a wide depth-44 one, 4 streams.
    Chains, by hand (3 us per kernel, 40 bytes per parameter at 3 TB/s):
    - the narrow pair: 24 + 2 + 37 x 44 = 1,654 kernels (4.962 ms) + 2 x 907,460 x 40 B (0.0242 ms) = 4.9862 ms;
      each narrow one alone: 1,653 kernels (4.959 ms) + 0.0121 ms = 4.9711 ms;
    - the deep wide one alone: 4.959 ms + 54,270,000 x 40 B (0.7236 ms) = 5.6826 ms; with a narrow
      one beside it, padded to its shape: 4.962 + 2 x 0.7236 = 6.4092 ms;
    - the wide pair: 24 + 2 + 74 = 100 kernels (0.300 ms) + 2 x 10,176,320 x 40 B (0.2714 ms) = 0.5714 ms;
    - all traffic: 1.0192 ms.
    So the deep wide model is the critical path alone (5.6826 ms): packing a narrow deep model with it
    would make it 6.4092 ms (13% more), so it stays alone. Parting the narrow pair would lower its own
    chain by 0.3% only (and the round not at all): within ROUND_TIE the least serial time wins and the
    pair stays together (one chain of 1,654 kernels, not two of 1,653)."""
    specs = [NARROW, WIDE, NARROW, WIDE, DEEP_WIDE]
    packs = plan_round(specs, 4, model=MODEL)
    assert sorted(map(sorted, packs)) == [[0, 2], [1, 3], [4]]
    critical = (24 + 1 + 37 * 44) * 3e-6 + 54_270_000 * 40 / 3e12
    assert critical == pytest.approx(5.68260e-3, rel=1e-5)
    assert MODEL.round_time(specs, packs) == pytest.approx(critical)
    assert MODEL.chain(2, DEEP_WIDE.params, 44) == pytest.approx(6.40920e-3, rel=1e-5)
    assert MODEL.chain(2, NARROW.params, 44) == pytest.approx(4.98620e-3, rel=1e-5)
    assert MODEL.chain(2, WIDE.params, 2) == pytest.approx(0.5714e-3, rel=1e-3)
    # The best of every partition into at most 4 packs, and the least serial time among its ties.
    every = list(partitions(len(specs), 4))
    best = min(MODEL.round_time(specs, p) for p in every)
    assert best == pytest.approx(critical)
    ties = [p for p in every if MODEL.round_time(specs, p) <= 1.02 * best]
    assert MODEL.serial_time(specs, packs) == pytest.approx(min(MODEL.serial_time(specs, p) for p in ties))

    # With two streams some deep model must share a pack: the planner finds the best 2-pack partition.
    two = RoundModel(kernel_s=3e-6, bandwidth=3e12, streams=2)
    packs = plan_round(specs, 4, model=two)
    assert two.round_time(specs, packs) == pytest.approx(min(two.round_time(specs, p)
                                                             for p in partitions(len(specs), 2)))


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
