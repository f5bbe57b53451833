"""The executors: how claimed trials are trained, one after the other or as packs; never their bookkeeping.

Both call TrialRun.epoch_end after each finished epoch (the decision, then the checkpoint: trial.py) from
the training's epoch-end callback, whose answer (go on or stop) is the same contract for loop.train and
packed.PackRun, and return one outcome per run; they differ only in how they train. SerialExecutor
trains one trial after the other through training.loop.train. PackExecutor trains them as rounds of
heterogeneous packs (training.packed.PackRun, stepped together by training.rounds); what a serial
trial promises holds per member:
- Checkpoints: after each finished epoch every live member's state is written to its own
  checkpoint (checkpoint.path_for of its retry chain) in loop.train's format, sliced out of the
  pack (packed.PackStep.member_optimizer_state). Per-member files, not one pack file, because a
  retried member may come back alone (serial path, another worker, a smaller GPU) or in another
  pack: loop.train and a PackRun both resume from it. A resumed pack groups members by the
  epoch they resume from (a pack shares one data order, i.e. one generator position).
- Failure: a member whose loss turns non-finite is retired inside the pack and gets its own
  TrialFailed; the others go on, and leave it behind at the repack (below). Out of memory fails
  the whole pack (TrialFailed out of its PackRun): it leaves the round, the other packs go on, and
  the executor retrains its members (from their checkpoints) in packs of half the size in a later
  round; only a member that runs out of memory alone fails.
- Ctrl-C: the stop flag is checked after every step (a host-side list check, no device sync), so
  the pack stops within a step; trial.run_trials closes every member for retry.
- Early stopping: the member's epoch_end with its psnr_val_epoch (one packed evaluation on the
  per-epoch subset); False retires the member (its weights freeze) and its outcome is StoppedEarly,
  told PRUNED like a serial trial.
- Rounds: every pack of a round steps together (training.rounds.drive: round-robin one step each,
  the deepest pack first, each on its own CUDA stream), so the one deep pack does not run alone
  while the wide ones wait; each pack keeps its own generator, so a member's result is what it is
  when its pack trains alone. On CUDA the packs are planned to minimise the modelled round time
  (training.packing.plan_round), and split into several rounds when together they would not fit
  the memory; a CPU plans by the serial cost (plan_packs), one round.
- Repack: at the end of an epoch in which members retired, the pack is rebuilt from its live
  members alone (PackRun(repack=True), packed.repack_pays: always while an epoch remains when
  the step runs eagerly, when the saving outweighs the recapture with CUDA graphs), each carrying its
  exact weights, moments and step count, so a retired member stops costing its padded FLOPs. Freed
  slots are not refilled: a new trial would start at epoch 0, but a pack shares one data order (one
  generator position), so it could not train exactly as it would alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from hgsearch.config import RunConfig
from hgsearch.errors import TrialFailed
from hgsearch.events import Progress
from hgsearch.search.testhooks import pause_at
from hgsearch.search.trial import Executor, Outcome, StoppedEarly, TrialRun
from hgsearch.stop import check_stop
from hgsearch.training.loop import CUDA_BF16, epoch_eval_split, train
from hgsearch.training.packed import PackRun
from hgsearch.training.packing import RoundModel, pack_limits, plan_packs, plan_round, round_claim, split_rounds
from hgsearch.training.rounds import drive

PROGRESS_EVERY = 50  # steps between Progress events, as loop.train's default report_every


def _stopped(run: TrialRun) -> StoppedEarly:
    assert run.stopped is not None  # epoch_end returned False
    return run.stopped


class SerialExecutor:
    """One trial after the other through training.loop.train, checkpointing each epoch.

    epoch_eval_size: score each epoch on the first that many validation images (0: all of them) and
    pass it to on_epoch as psnr_val_epoch; None: no per-epoch evaluation.
    """

    def __init__(self, epoch_eval_size: int | None = None) -> None:
        self.epoch_eval_size = epoch_eval_size

    def run(self, runs: Sequence[TrialRun]) -> list[Outcome]:
        return [self._train(run) for run in runs]

    def _train(self, run: TrialRun) -> Outcome:
        rec, family, data, reporter = run.record, run.search.family, run.search.data, run.search.reporter
        batch_size = run.search.cfg.batch_size

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            check_stop()
            reporter(Progress(family, epoch, rec.epochs, step, steps, loss))
            if epoch >= 1 and step < steps:
                pause_at("epoch")  # mid-epoch, with an earlier epoch's checkpoint on disk

        def on_epoch_end(state: dict[str, Any]) -> bool:
            if not run.epoch_end(state):
                return False
            if state["epoch"] == rec.epochs:
                pause_at("eval")  # training done, evaluation next
            return True

        steps = -(-len(data.train) // batch_size)
        epoch_eval = None if self.epoch_eval_size is None else epoch_eval_split(data.val, self.epoch_eval_size)
        try:
            _, res = train(rec.spec, data, lr=rec.lr, epochs=rec.epochs, batch_size=batch_size, seed=rec.seed,
                           progress=progress, report_every=max(1, min(50, steps // 4)), resume=run.resume,
                           on_epoch_end=on_epoch_end, epoch_eval=epoch_eval, stop_check=check_stop)
        except TrialFailed as e:
            return e
        return _stopped(run) if res is None else res


class PackExecutor:
    """Trains claimed trials as rounds of packs of at most max_k members (None: as many as the device
    holds), every pack of a round stepped together (training.rounds.drive).

    model: the round-time model packs are planned with (training.packing.plan_round); None: the
    default model on CUDA, the serial cost (plan_packs) on a CPU, where nothing runs concurrently.
    """

    def __init__(self, max_k: int | None = None, epoch_eval_size: int | None = None,
                 model: RoundModel | None = None) -> None:
        self.max_k = max_k
        self.epoch_eval_size = epoch_eval_size  # as SerialExecutor's: psnr_val_epoch from evaluate_packed
        self.model = model

    def run(self, runs: Sequence[TrialRun]) -> list[Outcome]:
        if not runs:
            return []
        device = runs[0].search.data.train.inputs.device
        max_k, max_bytes = pack_limits(device, self.max_k)
        model = self.model or (RoundModel() if device.type == "cuda" else None)
        specs = [run.record.spec for run in runs]
        batch_size = runs[0].search.cfg.batch_size
        outcomes: dict[int, Outcome] = {}
        todo = [(list(range(len(runs))), max_k)]
        while todo:
            packs = [p for members, k in todo for p in self._plan([runs[i] for i in members], members, k, max_bytes,
                                                                   model)]
            todo = []
            for packs_of_round in split_rounds(specs, packs, max_bytes, batch_size):
                self._round(packs_of_round, runs, outcomes, todo, device)
        return [outcomes[i] for i in range(len(runs))]

    def _round(self, packs: list[list[int]], runs: Sequence[TrialRun], outcomes: dict[int, Outcome],
               todo: list[tuple[list[int], int]], device: torch.device) -> None:
        """Train one round's packs together; a pack out of memory goes back to todo at half the size."""

        def failed(j: int, e: TrialFailed) -> None:  # out of memory for the pack as a whole
            pack = packs[j]
            left = [i for i in pack if i not in outcomes]
            if len(pack) == 1:
                outcomes[pack[0]] = e
            elif left:
                # Retrain from the members' last checkpoints, half as many at once.
                for i in left:
                    runs[i].reload()
                todo.append((left, max(1, len(pack) // 2)))

        def finished(j: int, results: list) -> None:
            for i, res in zip(packs[j], results, strict=True):
                outcomes.setdefault(i, res)  # a member stopped early keeps that outcome

        depths = [max(runs[i].record.spec.depth for i in pack) for pack in packs]
        drive([partial(self._start, pack, runs, outcomes) for pack in packs], depths, device,
              finished=finished, failed=failed)

    @staticmethod
    def _plan(members: list[TrialRun], index: list[int], max_k: int, max_bytes: int | None,
              model: RoundModel | None) -> list[list[int]]:
        """Packs (as indices into the runs) of members that resume from the same epoch."""
        by_epoch: dict[int, list[int]] = defaultdict(list)
        for j, run in enumerate(members):
            by_epoch[int(run.resume["epoch"]) if run.resume else 0].append(j)
        packs = []
        for js in by_epoch.values():
            specs = [members[j].record.spec for j in js]
            seeds = [members[j].record.seed for j in js]
            batch_size = members[js[0]].search.cfg.batch_size
            plan = (plan_packs(specs, max_k, seeds=seeds, max_bytes=max_bytes, batch_size=batch_size)
                    if model is None else
                    plan_round(specs, max_k, seeds=seeds, max_bytes=max_bytes, batch_size=batch_size, model=model))
            packs.extend([index[js[q]] for q in p] for p in plan)
        return packs

    def _start(self, pack: list[int], runs: Sequence[TrialRun], outcomes: dict[int, Outcome],
               stream: torch.cuda.Stream | None) -> PackRun:
        """The PackRun of one pack on its stream, its hooks wired to the members' TrialRuns."""
        members = [runs[i] for i in pack]
        first = members[0]
        epochs, batch_size = first.record.epochs, first.search.cfg.batch_size
        family, data, reporter = first.search.family, first.search.data, first.search.reporter
        steps = -(-len(data.train) // batch_size)
        reported = [0]  # the last epoch whose end was reported

        def on_step(epoch: int, step: int, per_epoch: int) -> None:
            check_stop()
            if step % PROGRESS_EVERY == 0:
                reporter(Progress(family, epoch, epochs, step, per_epoch, math.nan))  # no device read per step
            if epoch >= 1 and step < per_epoch:
                pause_at("epoch")  # mid-epoch, with the members' earlier checkpoints on disk

        def on_epoch_end(j: int, state: dict[str, Any]) -> bool:
            epoch = int(state["epoch"])
            if reported[0] < epoch:  # the epoch's end, with the loss of its first live member
                reported[0] = epoch
                reporter(Progress(family, epoch - 1, epochs, steps, steps, float(state["loss"])))
            if not members[j].epoch_end(state):
                outcomes[pack[j]] = _stopped(members[j])
                return False
            if epoch == epochs and j == len(members) - 1:
                pause_at("eval")  # training done (the members' last checkpoints written), evaluation next
            return True

        return PackRun(
            [m.record.spec for m in members], data, lrs=[m.record.lr for m in members], epochs=epochs,
            batch_size=batch_size, seed=first.record.seed, device=data.train.inputs.device,
            bf16=CUDA_BF16, resume=[m.resume for m in members], on_epoch_end=on_epoch_end, on_step=on_step,
            repack=True, stream=stream,
            epoch_eval=None if self.epoch_eval_size is None else epoch_eval_split(data.val, self.epoch_eval_size))


def executor_for(cfg: RunConfig, device: torch.device) -> tuple[Executor, int]:
    """(the executor, trials to claim per round) for this run: packs on CUDA or with --pack-size K > 1.

    pack_size 0 (the default) means packs on CUDA, as many trials per round as the device's memory
    holds (training.packing.round_claim), and the serial loop on a CPU, where packs measured 0.5-0.8x
    serial; 1 is the serial loop everywhere. Either evaluates every epoch on cfg.epoch_eval_size
    validation images: the learning curves (epoch_hook.py).
    """
    if cfg.pack_size == 1 or (cfg.pack_size == 0 and device.type != "cuda"):
        return SerialExecutor(cfg.epoch_eval_size), 1
    executor = PackExecutor(cfg.pack_size or None, cfg.epoch_eval_size)
    return executor, round_claim(device, cfg.budget, executor.max_k)
