"""A trial's life in one place: claimed -> sampled -> resumed from its checkpoint -> trained by an
executor (with a per-epoch decision point) -> told COMPLETE, FAIL or PRUNED, or queued again when cut off.
A COMPLETE trial on its family's current front keeps its trained weights for the report (keep_weights).

Two seams for what comes next:
- Executor: run_trial hands its claimed trials to `executor.run(claimed, ...)`; SerialExecutor
  trains them one after the other through train.train (today's loop). A GPU executor that trains a
  pack of trials at once implements the same method.
- on_epoch(claimed, epoch, metrics) -> bool, called by the executor after each finished epoch
  (epoch counts finished epochs: 1 .. record.epochs, from resumed + 1 after a resume), before the
  epoch's checkpoint is written: a kill after a decision resumes from the previous epoch and decides
  again (see early_stop.py). True keeps training (the default, keep_going) and writes the checkpoint.
  False ends the trial there: it is told to Optuna as PRUNED, keeping its record's attrs plus
  `stopped_at_epoch` and the metrics it was stopped on, and its checkpoint is deleted. A PRUNED
  trial is final and counts towards the study's target like a COMPLETE one (claims.claim).
  metrics holds train_loss (the epoch's mean), seconds (wall time so far) and, when the executor
  evaluates each epoch, psnr_val_epoch (validation PSNR on the fixed per-epoch subset).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import TaskData
from hgsearch.errors import StorageError, TrialFailed
from hgsearch.events import Note, Progress, Reporter, TrialEnd, TrialStart
from hgsearch.model import space as space_mod
from hgsearch.search.claims import Heartbeat, ask, close_trial
from hgsearch.search.pruning import dominates
from hgsearch.search.sampler import make_sampler
from hgsearch.stop import Stopped, check_stop, stop_requested
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import RETRY_ATTR
from hgsearch.text import first_line
from hgsearch.training import checkpoint
from hgsearch.training.loop import TrainResult, epoch_eval_split, train
from hgsearch.training.record import TrialRecord, result_attrs, save_weights, weights_path

PAUSE_ENV = "HGSEARCH_TEST_PAUSE_AT"


_trials_run = [0]  # trials this process has started, for the test hook


def _pause_at(point: str) -> None:
    """Test hook: with HGSEARCH_TEST_PAUSE_AT=<point>[:<k>], print a marker and wait there, in the k-th
    trial this process runs (default 1), so a test can kill the process at a known place. Points:
    claimed (no configuration stored yet), epoch (mid-epoch, a checkpoint on disk), decided (an
    epoch's on_epoch decision taken, its checkpoint not written), eval (training done, evaluation next),
    complete (told COMPLETE, checkpoint not yet removed). Returns on a stop."""
    want = os.environ.get(PAUSE_ENV)
    if not want or want.partition(":")[0] != point or int(want.partition(":")[2] or 1) != _trials_run[0]:
        return
    os.environ.pop(PAUSE_ENV)  # once per process
    os.write(2, f"HGSEARCH_PAUSED {point}\n".encode())
    while not stop_requested():
        time.sleep(0.05)


@dataclass(frozen=True)
class ClaimedTrial:
    """A RUNNING trial of ours with its configuration stored, ready for an executor."""

    study: optuna.Study
    trial: optuna.Trial
    family: str
    record: TrialRecord
    batch_size: int
    checkpoint: Path  # rewritten after each epoch; shared by the trial's retries (see checkpoint.py)
    meta: dict[str, Any]  # what a checkpoint must match to be resumed
    resume: dict[str, Any] | None  # the checkpoint's training state, None to start at epoch 0
    retry_of: list[int]  # numbers of the earlier, cut-off trials of this configuration
    study_dir: Path  # <results-dir>/<study>: where a completed front trial's weights are kept (keep_weights)


EpochHook = Callable[[ClaimedTrial, int, dict[str, float]], bool]


def keep_going(claimed: ClaimedTrial, epoch: int, metrics: dict[str, float]) -> bool:
    """The default per-epoch decision: train every epoch."""
    return True


@dataclass(frozen=True)
class StoppedEarly:
    """An executor's outcome for a trial that on_epoch stopped after `epoch` finished epochs."""

    epoch: int
    metrics: dict[str, float]


Outcome = TrainResult | TrialFailed | StoppedEarly


class Executor(Protocol):
    """Trains claimed trials and returns one outcome per trial, in order.

    A trial's own failure (non-finite loss, out of memory) is its outcome, not an exception; an
    exception (a stop, a storage error, a bug) ends them all and run_trial queues each for retry.
    """

    def run(self, claimed: Sequence[ClaimedTrial], data: TaskData, reporter: Reporter,
            on_epoch: EpochHook) -> list[Outcome]: ...


class _EndTrial(Exception):
    """Raised out of train's epoch callback when on_epoch says stop."""

    def __init__(self, stopped: StoppedEarly) -> None:
        super().__init__(stopped.epoch)
        self.stopped = stopped


def epoch_metrics(state: dict[str, Any]) -> dict[str, float]:
    """What on_epoch gets from an epoch-end state: train_loss, seconds, and psnr_val_epoch when evaluated."""
    metrics = {"train_loss": float(state["loss"]), "seconds": float(state["seconds"])}
    if "psnr_val_epoch" in state:
        metrics["psnr_val_epoch"] = float(state["psnr_val_epoch"])
    return metrics


def save_checkpoint(c: ClaimedTrial, state: dict[str, Any]) -> None:
    try:
        checkpoint.save(c.checkpoint, state, c.meta)
    except OSError as e:
        raise StorageError(f"cannot write checkpoint {c.checkpoint} ({e.strerror}): free space or pass a "
                           "writable --results-dir") from None


class SerialExecutor:
    """One trial after the other through train.train, checkpointing each epoch.

    epoch_eval_size: score each epoch on the first that many validation images (0: all of them) and
    pass it to on_epoch as psnr_val_epoch; None: no per-epoch evaluation.
    """

    def __init__(self, epoch_eval_size: int | None = None) -> None:
        self.epoch_eval_size = epoch_eval_size

    def run(self, claimed: Sequence[ClaimedTrial], data: TaskData, reporter: Reporter,
            on_epoch: EpochHook) -> list[Outcome]:
        return [self._train(c, data, reporter, on_epoch) for c in claimed]

    def _train(self, c: ClaimedTrial, data: TaskData, reporter: Reporter, on_epoch: EpochHook) -> Outcome:
        rec = c.record

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            check_stop()
            reporter(Progress(c.family, epoch, rec.epochs, step, steps, loss))
            if epoch >= 1 and step < steps:
                _pause_at("epoch")  # mid-epoch, with an earlier epoch's checkpoint on disk

        def on_epoch_end(state: dict[str, Any]) -> None:
            metrics = epoch_metrics(state)
            keep = on_epoch(c, int(state["epoch"]), metrics)
            _pause_at("decided")  # the epoch's decision taken, its checkpoint not yet written
            if not keep:
                raise _EndTrial(StoppedEarly(int(state["epoch"]), metrics))
            save_checkpoint(c, state)
            if state["epoch"] == rec.epochs:
                _pause_at("eval")  # training done, evaluation next

        steps = -(-len(data.train) // c.batch_size)
        epoch_eval = None if self.epoch_eval_size is None else epoch_eval_split(data.val, self.epoch_eval_size)
        try:
            _, res = train(rec.spec, data, lr=rec.lr, epochs=rec.epochs, batch_size=c.batch_size, seed=rec.seed,
                           progress=progress, report_every=max(1, min(50, steps // 4)), resume=c.resume,
                           on_epoch_end=on_epoch_end, epoch_eval=epoch_eval, stop_check=check_stop)
        except TrialFailed as e:
            return e
        except _EndTrial as e:
            return e.stopped
        return res


def origin(trial: FrozenTrial | optuna.Trial) -> int:
    """The number of the first trial of this trial's retry chain (it names the chain's checkpoint)."""
    history = trial.user_attrs.get(RETRY_ATTR, [])
    return history[0] if history else trial.number


def _claimed(study: optuna.Study, trial: optuna.Trial, cfg: RunConfig, family: str, data: TaskData,
             reporter: Reporter) -> ClaimedTrial:
    """Sample (or, for a retry, replay) the configuration, store it, and find the checkpoint to resume."""
    spec, lr = space_mod.sample(trial, family, cfg.budget, data.d_in, data.d_out, cfg.space, cfg.fixed_win)
    # Everything needed to rebuild the model from the storage alone, written before training.
    rec = TrialRecord.of(spec, lr=lr, seed=cfg.seed, epochs=cfg.epochs)
    attrs = rec.to_attrs()
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    history = trial.user_attrs.get(RETRY_ATTR, [])
    first = origin(trial)
    ckpt = checkpoint.path_for(cfg.study_dir, family, first)
    meta = {"study": cfg.study_name, "family": family, "origin": first, **attrs, "batch_size": cfg.batch_size}
    resume, why = checkpoint.load(ckpt, meta)
    if why:
        reporter(Note(f"{family} trial #{trial.number}: {why}"))
    reporter(TrialStart(family, trial.number, spec, lr, history, int(resume["epoch"]) if resume else 0))
    return ClaimedTrial(study, trial, family, rec, cfg.batch_size, ckpt, meta, resume, history, Path(cfg.study_dir))


def run_trial(study: optuna.Study, cfg: RunConfig, family: str, data: TaskData, reporter: Reporter,
              trial: optuna.Trial | None = None, *, executor: Executor | None = None,
              on_epoch: EpochHook = keep_going) -> FrozenTrial:
    """Train one claimed trial (or ask one), checkpointing each epoch, and tell the result.

    A TrialFailed is recorded, not raised (the configuration is not retried: it would fail again).
    Any other exception (Ctrl-C, a storage error) closes the trial, queues it for retry and propagates.
    """
    if trial is None:
        trial = ask(study)
    [frozen] = run_trials(study, cfg, family, data, reporter, [trial], executor=executor, on_epoch=on_epoch)
    return frozen


def run_trials(study: optuna.Study, cfg: RunConfig, family: str, data: TaskData, reporter: Reporter,
               trials: Sequence[optuna.Trial], *, executor: Executor | None = None,
               on_epoch: EpochHook = keep_going) -> list[FrozenTrial]:
    """run_trial for several claimed trials handed to the executor together (a pack); each is told its own outcome.

    Each trial samples its configuration with the sampler a serial run would have used for it (seeded
    by its number), so a pack's members are the configurations of the same trials run one by one
    while TPE is in its random start-up. An exception closes every one of them for retry.
    """
    heartbeats = [Heartbeat(seam.storage(study), seam.trial_id(t)) for t in trials]
    claimed: list[ClaimedTrial] = []
    try:
        for heartbeat in heartbeats:
            heartbeat.start()
        for trial in trials:
            _trials_run[0] += 1
            _pause_at("claimed")
            if len(trials) > 1:
                study.sampler = make_sampler(cfg, family, trial.number)
            claimed.append(_claimed(study, trial, cfg, family, data, reporter))
        outcomes = (executor or SerialExecutor()).run(claimed, data, reporter, on_epoch)
    except BaseException as e:
        for heartbeat in heartbeats:
            heartbeat.stop()
        reason = f"interrupted by {e.signame}" if isinstance(e, Stopped) else (
            "interrupted" if isinstance(e, KeyboardInterrupt) else f"crashed: {type(e).__name__}: {first_line(e)}")
        for trial in trials:
            with contextlib.suppress(Exception):  # best effort: if this fails, the next run reaps it
                close_trial(study, seam.frozen(study, trial), reason, retry=True)
        raise
    return [_finish(c, outcome, heartbeat, reporter)
            for c, outcome, heartbeat in zip(claimed, outcomes, heartbeats, strict=True)]


def _finish(c: ClaimedTrial, outcome: Outcome, heartbeat: Heartbeat, reporter: Reporter) -> FrozenTrial:
    """Tell Optuna how the trial ended, delete its checkpoint when it will not be resumed, report it."""
    study, trial = c.study, c.trial
    if isinstance(outcome, TrialFailed):
        heartbeat.stop()
        close_trial(study, seam.frozen(study, trial), str(outcome), retry=False)
        checkpoint.remove(c.checkpoint)
        frozen = seam.frozen(study, trial)
        reporter(TrialEnd(c.family, frozen, str(outcome)))
        return frozen
    if isinstance(outcome, StoppedEarly):
        attrs: dict[str, Any] = {"stopped_at_epoch": outcome.epoch, **outcome.metrics}
        told: dict[str, Any] = {"state": TrialState.PRUNED}
        reason = (trial.user_attrs.get("fail_reason")
                  or f"stopped early after epoch {outcome.epoch} of {c.record.epochs}")
    else:
        attrs, told, reason = result_attrs(outcome), {"values": [float(c.record.params), outcome.psnr_val]}, None
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    try:
        frozen = study.tell(trial, **told)
    except (UpdateFinishedTrialError, RuntimeError):
        # Another worker closed it as stale (this process stalled past the grace period): its
        # retry is queued, so this result is dropped to keep the count exact.
        frozen = seam.frozen(study, trial)
        reporter(TrialEnd(c.family, frozen, "closed as stale by another worker; result dropped"))
        return frozen
    finally:
        heartbeat.stop()
    if isinstance(outcome, TrainResult):
        _pause_at("complete")
        keep_weights(c, frozen, outcome, reporter)
    checkpoint.remove(c.checkpoint)
    reporter(TrialEnd(c.family, frozen, reason))
    return frozen


def keep_weights(c: ClaimedTrial, frozen: FrozenTrial, res: TrainResult, reporter: Reporter) -> None:
    """Keep a trial just told COMPLETE in the weights cache when it is on its family's front, and drop
    the cached weights of the family's trials it dominates.

    The front is the non-dominated set of the family's COMPLETE trials by (params, psnr_val), itself
    included (ties all stay). The weights are the model of its last checkpoint (both executors write
    one after the final epoch, and evaluation changes nothing after it), saved in
    record.save_weights's format with the trial's own results, so confirm.frontier_model finds them
    "cached" and the report retrains nothing. Being dominated is permanent (trials are only added),
    so every point of the final front kept its weights when it completed, and the cache stays the
    size of the front. Workers (or hosts) finishing at once may miss each other's trial: a dominated
    trial's file can then stay behind, which costs disk only (a file always holds its own trial's
    weights). A missing file (killed between the tell and this save, a failed write, a trial trained
    on another host, whose file is in that host's results directory) costs frontier_model a retrain,
    its fallback. A failed read or write here is a Note, never the trial's failure: it is COMPLETE.
    """
    me = (frozen.values[0], frozen.values[1])
    others = {t.number: (t.values[0], t.values[1])
              for t in c.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number != frozen.number}
    if any(dominates(p, me) for p in others.values()):
        return
    path = weights_path(c.study_dir, c.family, frozen.number)
    try:
        state, why = checkpoint.load(c.checkpoint, c.meta)
        if state is None:
            reporter(Note(f"{c.family} trial #{frozen.number}: weights not kept ({why or 'no checkpoint'}); "
                          "report will retrain it"))
            return
        save_weights(path, c.record, state["model"], res)
        for number, p in others.items():
            if dominates(me, p):
                weights_path(c.study_dir, c.family, number).unlink(missing_ok=True)
    except (OSError, StorageError) as e:  # StorageError: atomic_write's full disk
        reporter(Note(f"{c.family} trial #{frozen.number}: cannot keep its weights in {path.parent} "
                      f"({first_line(e)}); report will retrain it"))


def sweep_checkpoints(study: optuna.Study, cfg: RunConfig, family: str) -> None:
    """Delete checkpoints left by trials that finished (e.g. killed between completing and cleaning up)."""
    keep = {origin(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    checkpoint.sweep(cfg.study_dir, family, keep)
