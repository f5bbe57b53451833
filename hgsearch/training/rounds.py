"""The round driver: every pack of a round steps together, one step each in turn, deepest pack first.

A round is the packs one device trains at once (training.packing.plan_round plans them). Instead of
one pack to its end after another, `drive` builds every pack (a packed.PackRun) and steps them
round-robin, the deepest first, until each is done, then hands each pack's results over. On CUDA each
pack runs on its own stream, its CUDA graph captured and replayed there (graphs captured on one
stream share a cuBLAS workspace, pytorch/pytorch#193402, so they must not share one to overlap); the
deepest pack, the round's longest dependent chain of kernels, gets a high-priority stream, so the
shallow packs fill the gaps around it. On a CPU there are no streams: the same order, one op after
another.

Interleaving changes no result: each PackRun owns its generator (one data order per pack, as when it
trains alone), its weights and its optimizer state, and no op reads another pack's tensors, so every
member's result is exactly what train_packed gives its pack alone (tests/test_rounds.py).
A pack that fails as a whole (out of memory: TrialFailed) leaves the round and the others go on;
anything else (a requested stop, Stopped, raised by a pack's on_step) ends the round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hgsearch.errors import TrialFailed
from hgsearch.training.loop import TrainResult
from hgsearch.training.packed import PackRun

HIGH_PRIORITY = -1  # torch.cuda.Stream's priorities: lower is more urgent, 0 the default

# Builds one pack of the round on the stream given (None on a CPU).
PackStart = Callable[[torch.cuda.Stream | None], PackRun]
Finished = Callable[[int, list[TrainResult | TrialFailed]], None]
Failed = Callable[[int, TrialFailed], None]


def round_order(depths: Sequence[int]) -> list[int]:
    """The order the packs step in: deepest first (the round's critical path), ties in given order."""
    return sorted(range(len(depths)), key=lambda i: -depths[i])


def round_streams(device: torch.device, n: int) -> list[torch.cuda.Stream | None]:
    """One stream per pack in round order (the first, the deepest, high priority); None on a CPU."""
    if device.type != "cuda":
        return [None] * n
    return [torch.cuda.Stream(device, priority=HIGH_PRIORITY if j == 0 else 0) for j in range(n)]


def drive(starts: Sequence[PackStart], depths: Sequence[int], device: torch.device, *,
          finished: Finished, failed: Failed) -> None:
    """Train the packs of one round together: starts[i] builds pack i (of depth depths[i]) on its stream;
    finished(i, results) gets its PackRun.results() once it is done, failed(i, e) a pack's TrialFailed
    (out of memory: it leaves the round, the others go on). Stopped and other errors end the round."""
    order = round_order(depths)
    runs: dict[int, PackRun] = {}
    for i, stream in zip(order, round_streams(device, len(order)), strict=True):
        try:
            runs[i] = starts[i](stream)
        except TrialFailed as e:
            failed(i, e)
    live = [i for i in order if i in runs]
    while live:
        for i in list(live):
            run = runs[i]
            try:
                if not run.done:
                    run.step()
                results = run.results()[1] if run.done else None
            except TrialFailed as e:
                live.remove(i)
                del runs[i]  # its memory goes back before the others step on
                failed(i, e)
                continue
            if results is not None:
                live.remove(i)
                del runs[i]
                finished(i, results)
