"""Grouping trials into packs: who trains with whom, and how many members one device holds.

A pack pads every member to its largest width, bottleneck and depth (hgsearch.training.packed), so it costs
K x the padded member's FLOPs. Measured on an H200 (issue 12), a pack of K same-shape members runs at
about peak * K / (K + K0) with K0 ~ 10 for 2M-6M models (K=1 62k, K=8 326k, K=32 551k, K=128 625k
samples/s for the 5.8M Hourglass fit K0 = 9.8 within 6%), so a pack's time is proportional to
padded FLOPs x (K + K0): each pack pays K0 members' worth of fixed cost. `plan_packs` minimises that
sum: members sorted by one shape key, split into contiguous runs by dynamic programming, the best of
a few sort keys kept. Members that differ in seed, d_in or d_out never share a pack.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hgsearch.errors import UsageError
from hgsearch.model.families import ArchSpec, param_count

K0 = 10.0  # fixed cost of a pack, in members' work (fitted to the H200 numbers above)
CPU_PACK = 4  # packs measured 0.5-0.8x serial on a CPU; small packs keep the CPU path cheap to test
MAX_PACK = 128  # the H200's throughput barely grows past K = 128 (551k at 32, 625k at 128)
MEMORY_FRACTION = 0.5  # of the free device memory; the rest is evaluation, the graph pool, fragmentation


def padded_params(specs: Sequence[ArchSpec]) -> int:
    """Parameters of one member padded to the pack's largest width, bottleneck and depth."""
    w = max(s.width for s in specs)
    h = max(s.bottleneck for s in specs)
    depth = max(s.depth for s in specs)
    return param_count(specs[0].d_in, specs[0].d_out, w, h, depth)


def padding_waste(specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]]) -> float:
    """Padded FLOPs / useful FLOPs - 1 over all packs (FLOPs per sample are proportional to parameters)."""
    useful = sum(s.params for s in specs)
    padded = sum(len(p) * padded_params([specs[i] for i in p]) for p in packs)
    return padded / useful - 1.0


def pack_cost(specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]], k0: float = K0) -> float:
    """Estimated time of training the packs, in parameter-members: sum of padded params x (K + K0)."""
    return sum(padded_params([specs[i] for i in p]) * (len(p) + k0) for p in packs)


_SORT_KEYS = (
    lambda s: (s.width, s.bottleneck, s.depth),
    lambda s: (s.depth, s.width, s.bottleneck),
    lambda s: (s.bottleneck, s.width, s.depth),
    lambda s: (s.width * s.bottleneck * s.depth, s.width),
    lambda s: (s.params, s.depth),
)


def _runs(specs: Sequence[ArchSpec], order: list[int], max_k: int, max_bytes: int | None,
          batch_size: int) -> Iterator[tuple[int, int, int, int]]:
    """Every contiguous run order[start:end] that can be one pack (at most max_k members and max_bytes,
    a lone member always), as (start, end, padded parameters, padded depth), by ascending end."""
    d_in, d_out = specs[order[0]].d_in, specs[order[0]].d_out
    for end in range(1, len(order) + 1):
        w = h = depth = 0
        for start in range(end - 1, max(end - max_k, 0) - 1, -1):
            s = specs[order[start]]
            w, h, depth = max(w, s.width), max(h, s.bottleneck), max(depth, s.depth)
            k = end - start
            if k > 1 and max_bytes is not None and k * _bytes(d_in, d_out, w, h, depth, batch_size) > max_bytes:
                break  # the run only grows further back: no longer run fits either
            yield start, end, param_count(d_in, d_out, w, h, depth), depth


def _split(specs: Sequence[ArchSpec], order: list[int], max_k: int, k0: float, max_bytes: int | None,
           batch_size: int) -> tuple[float, list[list[int]]]:
    """Optimal contiguous split of `order` into packs of at most max_k members and max_bytes of memory
    (O(N * max_k) dynamic programme); a member too big for max_bytes alone still gets a pack of one."""
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for start, end, padded, _ in _runs(specs, order, max_k, max_bytes, batch_size):
        cost = best[start] + padded * (end - start + k0)  # ends ascend: best[start] is final here
        if cost < best[end]:
            best[end], cut[end] = cost, start
    packs, end = [], n
    while end:
        packs.append(order[cut[end]:end])
        end = cut[end]
    return best[n], packs[::-1]


def _groups(specs: Sequence[ArchSpec], max_k: int, seeds: Sequence[int] | None) -> list[list[int]]:
    """Indices of specs that may share a pack: same input and output sizes and seed (one data order)."""
    if max_k < 1:
        raise UsageError(f"a pack holds at least one member, got a pack size of {max_k}")
    seeds = list(seeds) if seeds is not None else [0] * len(specs)
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (s, seed) in enumerate(zip(specs, seeds, strict=True)):
        groups[(s.d_in, s.d_out, seed)].append(i)
    return list(groups.values())


def plan_packs(specs: Sequence[ArchSpec], max_k: int, *, seeds: Sequence[int] | None = None,
               k0: float = K0, max_bytes: int | None = None, batch_size: int = 128) -> list[list[int]]:
    """Indices of specs grouped into packs of at most max_k members (and max_bytes of device memory
    to train, see member_bytes) that waste little on padding."""
    packs: list[list[int]] = []
    for members in _groups(specs, max_k, seeds):
        plans = [_split(specs, sorted(members, key=lambda i: key(specs[i])), max_k, k0, max_bytes, batch_size)
                 for key in _SORT_KEYS]
        packs.extend(min(plans, key=lambda p: p[0])[1])
    return packs


def _bytes(d_in: int, d_out: int, w: int, h: int, depth: int, batch_size: int) -> int:
    state = 4 * 4 * param_count(d_in, d_out, w, h, depth)  # float32 weight, gradient, two moments
    # Saved for backward per block: the stream, its normalised copy, the branch and the masked branch
    # (4 x width) and the pre- and post-ReLU bottleneck (2 x bottleneck); plus the ends of the network.
    acts = 4 * batch_size * (depth * (4 * w + 2 * h) + 2 * w + 2 * d_out + d_in)
    return state + 2 * acts  # x2: autograd's temporaries and the CUDA graph's private pool


def member_bytes(specs: Sequence[ArchSpec], batch_size: int = 128) -> int:
    """Device memory one member padded to these specs' largest shape needs to train."""
    return _bytes(specs[0].d_in, specs[0].d_out, max(s.width for s in specs), max(s.bottleneck for s in specs),
                  max(s.depth for s in specs), batch_size)


def pack_limits(device: torch.device, override: int | None = None) -> tuple[int, int | None]:
    """(most members per pack, bytes a pack may use to train) on this device; override fixes the count.

    CUDA: up to MAX_PACK members within MEMORY_FRACTION of the free memory (plan_packs applies the
    bytes per pack, from each pack's own padded shape). CPU: CPU_PACK members, no memory limit.
    """
    if override is not None and override < 1:
        raise UsageError(f"--pack-size must be at least 1, got {override}")
    if device.type != "cuda":
        return override or CPU_PACK, None
    free, _ = torch.cuda.mem_get_info(device)
    return override or MAX_PACK, int(MEMORY_FRACTION * free)


# A round's time (issue 21): the packs of a round run at once, one CUDA stream each (training.rounds),
# so a round takes the longer of its longest dependent chain and its total traffic at the device's
# bandwidth. A pack's chain is its step's kernels one after another, each costing at least KERNEL_S
# (launch and dependency latency inside a graph), plus its own traffic. The defaults are estimates to be
# measured on a GPU after fusion (bench/gpu.py --profile): KERNEL_S is issue 21's fit to the H200 round
# before fusion (about 3 us per kernel), BANDWIDTH about an H100's or H200's measured copy bandwidth.
KERNEL_S = 3e-6
BANDWIDTH = 3.0e12
BYTES_PER_PARAM = 40  # per padded parameter and step: fused AdamW 28, gradient 4, weight reads 8
MAX_STREAMS = 8  # packs per round: CUDA_DEVICE_MAX_CONNECTIONS' default of 8 hardware queues
# Kernels of one step, read from the CPU op counts of bench/gpu.py --count-ops (bench/RESULTS.md, issue 21:
# every pack of the 20-trial sample fits 24 + K + per-block x depth exactly): 24 for the input and output
# layers, the loss and the step count, one fused AdamW launch per member, 37 per block eager, 14 compiled.
STEP_KERNELS = 24
BLOCK_KERNELS = 37
BLOCK_KERNELS_COMPILED = 14
ROUND_TIE = 0.02  # plans within 2% of the least modelled round time (the model's fit) count as equal
MAX_ROUND = 256  # trials claimed per round at most (planning is O(N x max_k) per candidate chain)
ROUND_BYTES_PER_PARAM = 32  # a member's float32 weight, gradient and two moments (16), doubled for its
# activations, padding and the graph pool: the estimate round_claim sizes a claim with


def step_kernels(k: int, depth: int, compiled: bool = False) -> int:
    """Kernels one step of a pack of k members padded to this depth launches (the CPU op-count fit)."""
    return STEP_KERNELS + k + (BLOCK_KERNELS_COMPILED if compiled else BLOCK_KERNELS) * depth


@dataclass(frozen=True)
class RoundModel:
    """The round-time model's parameters (see KERNEL_S): seconds per kernel, bytes per second, whether
    blocks are compiled, how many packs may run at once."""

    kernel_s: float = KERNEL_S
    bandwidth: float = BANDWIDTH
    compiled: bool = False
    streams: int = MAX_STREAMS

    def traffic(self, k: int, padded: int) -> float:
        """Seconds a step of k members of `padded` parameters each moves memory for."""
        return BYTES_PER_PARAM * k * padded / self.bandwidth

    def chain(self, k: int, padded: int, depth: int) -> float:
        """Seconds of one pack's step as a dependent chain: its kernels, then its own traffic."""
        return step_kernels(k, depth, self.compiled) * self.kernel_s + self.traffic(k, padded)

    def serial_time(self, specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]]) -> float:
        """Modelled seconds of one round were its packs to run one after another (the sum of their chains)."""
        return sum(self.chain(*s) for s in self._shapes(specs, packs))

    def _shapes(self, specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
        return [(len(p), padded_params([specs[i] for i in p]), max(specs[i].depth for i in p)) for p in packs]

    def round_time(self, specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]]) -> float:
        """Modelled seconds of one round (every pack one step): its longest chain or its total traffic."""
        shapes = self._shapes(specs, packs)
        return max(max(self.chain(*s) for s in shapes), sum(self.traffic(k, w) for k, w, _ in shapes))


def plan_round(specs: Sequence[ArchSpec], max_k: int, *, seeds: Sequence[int] | None = None,
               max_bytes: int | None = None, batch_size: int = 128, model: RoundModel | None = None
               ) -> list[list[int]]:
    """Indices of specs grouped into the packs of one round that minimise model.round_time: at most
    model.streams packs (more only when max_k or max_bytes per pack forces them), max_k members each.
    Among plans within ROUND_TIE of the least round time, the one with the least serial time (the sum
    of the packs' chains: fewer kernels, less padding) is kept, so a split that gains next to nothing
    (a deep pair parted to save one kernel) does not double the deep chain's kernels.

    For each sort key (as plan_packs), a dynamic programme finds the least traffic whose every pack's
    chain stays within a cap; the cap is searched over the candidate packs' chains (the round time
    max(cap, traffic) is smallest where the two cross). Groups of another seed or geometry are planned apart.
    """
    model = model or RoundModel()
    packs: list[list[int]] = []
    for members in _groups(specs, max_k, seeds):
        plans = [plan for key in _SORT_KEYS for plan in _plan_order(
            specs, sorted(members, key=lambda i: key(specs[i])), max_k, max_bytes, batch_size, model)]
        best = min(model.round_time(specs, p) for p in plans)
        packs.extend(min((p for p in plans if model.round_time(specs, p) <= (1 + ROUND_TIE) * best),
                         key=lambda p: (model.serial_time(specs, p), len(p))))
    return packs


def _plan_order(specs: Sequence[ArchSpec], order: list[int], max_k: int, max_bytes: int | None, batch_size: int,
                model: RoundModel) -> list[list[list[int]]]:
    """Candidate contiguous splits of `order` (see plan_round): the least round time's, and the least
    serial time's within ROUND_TIE of it."""
    n = len(order)
    runs = {(start, end): (model.traffic(end - start, padded), model.chain(end - start, padded, depth))
            for start, end, padded, depth in _runs(specs, order, max_k, max_bytes, batch_size)}  # -> (traffic, chain)
    caps = sorted({chain for _, chain in runs.values()})
    limit = max(model.streams, -(-n // max_k))
    while True:
        widest = _least(runs, n, caps[-1], limit)
        if widest is not None or limit >= n:
            break
        limit = min(n, 2 * limit)  # memory forces more packs than streams
    assert widest is not None  # packs of one always fit
    # The round time max(longest chain, traffic): the traffic shrinks as the cap grows, so the best
    # cap is where the cap first reaches the traffic, or the candidate just below it.
    lo, hi = 0, len(caps) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        found = _least(runs, n, caps[mid], limit)
        if found is not None and caps[mid] >= found[0]:
            hi = mid
        else:
            lo = mid + 1
    found_plans = [p for p in (_least(runs, n, caps[j], limit) for j in {lo, max(lo - 1, 0)}) if p is not None]
    plans = [[order[s:e] for s, e in cuts] for _, cuts in [*found_plans, widest]]
    best = min(model.round_time(specs, p) for p in plans)
    serial = _least(runs, n, (1 + ROUND_TIE) * best, limit, cost=1)  # the chains' sum within the tie
    if serial is not None:
        plans.append([order[s:e] for s, e in serial[1]])
    return plans


def _least(runs: dict[tuple[int, int], tuple[float, float]], n: int, cap: float, limit: int, cost: int = 0
           ) -> tuple[float, list[tuple[int, int]]] | None:
    """(sum, cuts) of the split of n members into at most `limit` runs whose chains stay within cap
    with the least sum of runs[...][cost] (0: traffic, 1: chain); None if there is none."""
    inf = float("inf")
    best = [0.0] + [inf] * n  # with the packs used so far
    cuts: list[list[int]] = []
    found: tuple[float, int] | None = None
    for j in range(1, limit + 1):
        nxt = [inf] * (n + 1)
        cut = [0] * (n + 1)
        for (start, end), values in runs.items():
            if values[1] <= cap and best[start] + values[cost] < nxt[end]:
                nxt[end], cut[end] = best[start] + values[cost], start
        cuts.append(cut)
        if nxt[n] < inf and (found is None or nxt[n] < found[0]):
            found = (nxt[n], j)
        best = nxt
    if found is None:
        return None
    out, end = [], n
    for j in range(found[1] - 1, -1, -1):
        start = cuts[j][end]
        out.append((start, end))
        end = start
    return found[0], out[::-1]


def round_claim(device: torch.device, budget: int, override: int | None = None) -> int:
    """Trials to claim for one round: override (--pack-size) if given, else as many members of the
    budget's size as MEMORY_FRACTION of the free memory holds (ROUND_BYTES_PER_PARAM each), at most
    MAX_ROUND; CPU_PACK on a CPU. The executor splits a claim that does not fit into several rounds."""
    max_k, max_bytes = pack_limits(device, override)
    if override is not None or max_bytes is None:
        return max_k
    return max(1, min(MAX_ROUND, max_bytes // (ROUND_BYTES_PER_PARAM * max(budget, 1))))


def split_rounds(specs: Sequence[ArchSpec], packs: Sequence[Sequence[int]], max_bytes: int | None,
                 batch_size: int = 128) -> list[list[list[int]]]:
    """Packs grouped into rounds whose packs together fit max_bytes (all of a round's packs are resident
    at once), deepest packs first, each into the first round it fits; one round when max_bytes is None."""
    if max_bytes is None:
        return [list(map(list, packs))] if packs else []
    rounds: list[tuple[int, list[list[int]]]] = []
    for p in sorted(packs, key=lambda p: -max(specs[i].depth for i in p)):
        need = len(p) * member_bytes([specs[i] for i in p], batch_size)
        for j, (used, members) in enumerate(rounds):
            if used + need <= max_bytes:
                rounds[j] = (used + need, [*members, list(p)])
                break
        else:
            rounds.append((need, [list(p)]))
    return [members for _, members in rounds]
