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
from collections.abc import Sequence

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


def _split(specs: Sequence[ArchSpec], order: list[int], max_k: int, k0: float, max_bytes: int | None,
           batch_size: int) -> tuple[float, list[list[int]]]:
    """Optimal contiguous split of `order` into packs of at most max_k members and max_bytes of memory
    (O(N * max_k) dynamic programme); a member too big for max_bytes alone still gets a pack of one."""
    n = len(order)
    d_in, d_out = specs[order[0]].d_in, specs[order[0]].d_out
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        w = h = depth = 0
        for start in range(end - 1, max(end - max_k, 0) - 1, -1):
            s = specs[order[start]]
            w, h, depth = max(w, s.width), max(h, s.bottleneck), max(depth, s.depth)
            k = end - start
            if k > 1 and max_bytes is not None and k * _bytes(d_in, d_out, w, h, depth, batch_size) > max_bytes:
                break  # the run only grows further back: no longer run fits either
            cost = best[start] + param_count(d_in, d_out, w, h, depth) * (k + k0)
            if cost < best[end]:
                best[end], cut[end] = cost, start
    packs, end = [], n
    while end:
        packs.append(order[cut[end]:end])
        end = cut[end]
    return best[n], packs[::-1]


def plan_packs(specs: Sequence[ArchSpec], max_k: int, *, seeds: Sequence[int] | None = None,
               k0: float = K0, max_bytes: int | None = None, batch_size: int = 128) -> list[list[int]]:
    """Indices of specs grouped into packs of at most max_k members (and max_bytes of device memory
    to train, see member_bytes) that waste little on padding."""
    if max_k < 1:
        raise UsageError(f"a pack holds at least one member, got a pack size of {max_k}")
    seeds = list(seeds) if seeds is not None else [0] * len(specs)
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, (s, seed) in enumerate(zip(specs, seeds, strict=True)):
        groups[(s.d_in, s.d_out, seed)].append(i)
    packs: list[list[int]] = []
    for members in groups.values():
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
