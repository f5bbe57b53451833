"""One claimed trial from its claim to its final state (TrialRun, close_trial) and the contract executors train under.

A trial's life: claimed (claims.claim_runs) and at once owned by a TrialRun: its heartbeat beating,
then its worker recorded (start) -> begin: its configuration drawn (or, for a retry, replayed) and
stored, its resume point read from its checkpoint -> trained by an executor (executors.py:
SerialExecutor one trial after the other through training.loop.train, PackExecutor several at once as
packs of training.packed.PackRun), which calls epoch_end after each finished epoch -> finish: told
COMPLETE (keeping its weights when on its family's front: record.keep_front_weights), PRUNED or FAIL;
or, when an exception cuts it off, requeue. Every final state is decided here: close_trial fails a
trial and queues its configuration again or drops it, for requeue and for claims.py (a dead worker's
trial, a surplus claim).

epoch_end(state) -> bool is the one epoch-end sequence of every executor: the per-epoch decision
on_epoch(run, epoch, metrics) -> bool (epoch counts finished epochs: 1 .. record.epochs, from resumed
+ 1 after a resume), then the epoch's checkpoint. The decision comes before the checkpoint: a kill
after a decision resumes from the previous epoch and decides again (see epoch_hook.py). True keeps
training (the default, keep_going) and writes the checkpoint. False ends the trial there: it is told
to Optuna as PRUNED, keeping its record's attrs plus STOPPED_AT_EPOCH_ATTR and the metrics it was
stopped on, and its checkpoint is deleted. A PRUNED trial is final and counts towards the study's
target like a COMPLETE one (claims.claim). metrics holds train_loss (the epoch's mean), seconds (wall
time so far) and, when the executor evaluates each epoch, psnr_val_epoch (validation PSNR on the
fixed per-epoch subset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch.errors import StorageError, TrialFailed
from hgsearch.events import Note, TrialEnd, TrialStart
from hgsearch.model import space as space_mod
from hgsearch.search import curves, testhooks
from hgsearch.search.context import FamilySearch
from hgsearch.search.liveness import Heartbeat, this_worker
from hgsearch.search.sampler import draw, draw_index, history, origin, pending
from hgsearch.stop import Stopped
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import (
    CURVE_KEY,
    DRAW_ATTR,
    REASON_ATTR,
    RETRY_ATTR,
    STALLS_ATTR,
    STOPPED_AT_EPOCH_ATTR,
    WORKER_ATTR,
)
from hgsearch.text import first_line
from hgsearch.training import checkpoint
from hgsearch.training.loop import TrainResult
from hgsearch.training.record import CONFIG_ATTRS, TrialRecord, keep_front_weights, result_attrs

EpochHook = Callable[["TrialRun", int, dict[str, float]], bool]

# A configuration whose attempts are cut off this many times in a row without finishing an epoch is
# retried no more: the evidence says it is the cause (it gets its process OOM-killed, hangs its worker).
# Cut-offs of attempts that finished an epoch never count: a preemptible host may cut a long trial off
# any number of times, and each retry resumes from its checkpoint.
MAX_STALLED_RETRIES = 3


def keep_going(run: TrialRun, epoch: int, metrics: dict[str, float]) -> bool:
    """The default per-epoch decision: train every epoch."""
    return True


@dataclass(frozen=True)
class StoppedEarly:
    """The outcome of a trial that on_epoch stopped after `epoch` finished epochs."""

    epoch: int
    metrics: dict[str, float]


Outcome = TrainResult | TrialFailed | StoppedEarly


class Executor(Protocol):
    """Trains begun trial runs and returns one outcome per run, in order; each run's epoch_end after each epoch.

    A trial's own failure (non-finite loss, out of memory) is its outcome, not an exception; an
    exception (a stop, a storage error, a bug) ends them all and run_trials queues each for retry.
    A run that epoch_end ended has run.stopped as its outcome.
    """

    def run(self, runs: Sequence[TrialRun]) -> list[Outcome]: ...


def epoch_metrics(state: dict[str, Any]) -> dict[str, float]:
    """What on_epoch gets from an epoch-end state: train_loss, seconds, and psnr_val_epoch when evaluated."""
    metrics = {"train_loss": float(state["loss"]), "seconds": float(state["seconds"])}
    if "psnr_val_epoch" in state:
        metrics["psnr_val_epoch"] = float(state["psnr_val_epoch"])
    return metrics


class TrialRun:
    """A RUNNING trial of ours, from its claim to its final state (see the module docstring).

    Set by begin(): record (the configuration), checkpoint (its path, rewritten after each epoch and
    shared by the trial's retries: see checkpoint.py), meta (what a checkpoint must match to be
    resumed), resume (the checkpoint's training state, None to start at epoch 0), retry_of (numbers
    of the earlier, cut-off trials of this configuration) and carried (the chain's curve and seconds
    up to the resume point, stored on this trial at once: curves.carried).
    """

    record: TrialRecord
    checkpoint: Path
    meta: dict[str, Any]
    resume: dict[str, Any] | None
    retry_of: list[int]
    carried: tuple[list[float], list[float]]

    def __init__(self, search: FamilySearch, trial: optuna.Trial, on_epoch: EpochHook = keep_going) -> None:
        self.search, self.trial, self.on_epoch = search, trial, on_epoch
        self.heartbeat = Heartbeat(seam.storage(search.study), seam.trial_id(trial))
        self.stopped: StoppedEarly | None = None  # set when epoch_end ends the trial

    def start(self) -> bool:
        """Start the heartbeat, then record this worker on the trial; False when another worker closed it meanwhile.

        In that order: a trial that names its worker has a heartbeat, so a worker that dies on another
        host leaves a trial Optuna finds stale; one that dies before this names none, and claims.reap
        closes that GRACE_PERIOD after it started. Closed meanwhile: reaped while this worker was
        cut off from the database for longer than that.
        """
        self.heartbeat.start()
        try:
            seam.storage(self.search.study).set_trial_user_attr(seam.trial_id(self.trial), WORKER_ATTR, this_worker())
        except UpdateFinishedTrialError:
            self.heartbeat.stop()
            return False
        return True

    def begin(self) -> None:
        """Draw (or, for a retry, replay) the configuration, store it, and find the checkpoint to resume."""
        testhooks.trial_begins()
        s, trial, cfg = self.search, self.trial, self.search.cfg
        # A new configuration is drawn by its place (sampler.py); a retry, or a trial the user queued with
        # study.enqueue_trial (Optuna's fixed_params), carries its own.
        if not trial.params and "fixed_params" not in seam.frozen(s.study, trial).system_attrs:
            seam.forget_cached_trials(s.study)
            trials = s.study.get_trials(deepcopy=False)
            index = draw_index(trials, trial.number)
            params, dists = draw(cfg, s.family, index, history(trials, index, s.batch), s.data.d_in, s.data.d_out,
                                 salt=pending(trials, trial.number))
            storage, trial_id = seam.storage(s.study), seam.trial_id(trial)
            storage.set_trial_user_attr(trial_id, DRAW_ATTR, index)
            for name, value in params.items():
                storage.set_trial_param(trial_id, name, dists[name].to_internal_repr(value), dists[name])
            self.trial = trial = optuna.Trial(s.study, trial_id)  # an optuna.Trial reads its params once, at init
        spec, lr = space_mod.sample(trial, s.family, cfg.budget, s.data.d_in, s.data.d_out, cfg.space, cfg.fixed_win)
        # Everything needed to rebuild the model from the storage alone, written before training.
        self.record = TrialRecord.of(spec, lr=lr, seed=cfg.seed, epochs=cfg.epochs)
        attrs = self.record.to_attrs()
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.retry_of = trial.user_attrs.get(RETRY_ATTR, [])
        first = origin(trial)
        self.checkpoint = checkpoint.path_for(cfg.study_dir, s.family, first)
        self.meta = {"study": cfg.study_name, "family": s.family, "origin": first, **attrs,
                     "batch_size": cfg.batch_size}
        why = self.reload()
        if why:
            s.reporter(Note(f"{s.family} trial #{trial.number}: {why}"))
        start = int(self.resume["epoch"]) if self.resume else 0
        self.carried = curves.carried(s.study.get_trials(deepcopy=False), self.retry_of, start) if start else ([], [])
        if self.carried[0]:
            for k, v in curves.curve_attrs(*self.carried).items():
                trial.set_user_attr(k, v)
            if start == self.record.epochs:  # no epoch left to train, so no epoch end writes them
                seam.set_intermediate_values(trial, self.carried[0])
        s.reporter(TrialStart(s.family, trial.number, spec, lr, self.retry_of,
                              int(self.resume["epoch"]) if self.resume else 0))

    def reload(self) -> str | None:
        """Read the resume point from the checkpoint (none: start at epoch 0); return why it was not usable."""
        self.resume, why = checkpoint.load(self.checkpoint, self.meta)
        return why

    def epoch_end(self, state: dict[str, Any]) -> bool:
        """After each finished epoch, from every executor: decide, then checkpoint. False: the trial ends
        here (self.stopped is its outcome); True: train on."""
        epoch = int(state["epoch"])
        metrics = epoch_metrics(state)
        keep = self.on_epoch(self, epoch, metrics)
        testhooks.pause_at("decided")  # the epoch's decision taken, its checkpoint not yet written
        if not keep:
            self.stopped = StoppedEarly(epoch, metrics)
            return False
        try:
            checkpoint.save(self.checkpoint, state, self.meta)
        except OSError as e:
            raise StorageError(f"cannot write checkpoint {self.checkpoint} ({e.strerror}): free space or pass a "
                               "writable --results-dir") from None
        return True

    def finish(self, outcome: Outcome) -> FrozenTrial:
        """Tell Optuna how the trial ended, delete its checkpoint when it will not be resumed, report it.

        A TrialFailed is recorded, not raised (the configuration is not retried: it would fail again).
        """
        study, trial, family, reporter = self.search.study, self.trial, self.search.family, self.search.reporter
        if isinstance(outcome, TrialFailed):
            self.heartbeat.stop()
            close_trial(study, seam.frozen(study, trial), str(outcome), retry=False)
            checkpoint.remove(self.checkpoint)
            frozen = seam.frozen(study, trial)
            reporter(TrialEnd(family, frozen, str(outcome)))
            return frozen
        if isinstance(outcome, StoppedEarly):
            attrs: dict[str, Any] = {STOPPED_AT_EPOCH_ATTR: outcome.epoch, **outcome.metrics}
            told: dict[str, Any] = {"state": TrialState.PRUNED}
            reason = (trial.user_attrs.get(REASON_ATTR)
                      or f"stopped early after epoch {outcome.epoch} of {self.record.epochs}")
        else:
            attrs, told, reason = result_attrs(outcome), {"values": [float(self.record.params), outcome.psnr_val]}, None
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        try:
            frozen = study.tell(trial, **told)
        except (UpdateFinishedTrialError, RuntimeError):
            # Another worker closed it as stale (this process stalled past the grace period): its
            # retry is queued, so this result is dropped to keep the count exact.
            frozen = seam.frozen(study, trial)
            reporter(TrialEnd(family, frozen, "closed as stale by another worker; result dropped"))
            return frozen
        finally:
            self.heartbeat.stop()
        if isinstance(outcome, TrainResult):
            testhooks.pause_at("complete")
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            others = {t.number: (t.values[0], t.values[1]) for t in complete if t.number != frozen.number}
            why = keep_front_weights(self.search.cfg.study_dir, frozen.number, self.record, outcome, others,
                                     self.checkpoint, self.meta)
            if why:
                reporter(Note(f"{family} trial #{frozen.number}: {why}"))
        checkpoint.remove(self.checkpoint)
        reporter(TrialEnd(family, frozen, reason))
        return frozen

    def requeue(self, cause: BaseException) -> None:
        """Cut off by an exception (Ctrl-C, a storage error, a bug): close the trial and queue it for retry."""
        self.heartbeat.stop()
        reason = f"interrupted by {cause.signame}" if isinstance(cause, Stopped) else (
            "interrupted" if isinstance(cause, KeyboardInterrupt) else
            f"crashed: {type(cause).__name__}: {first_line(cause)}")
        # A stop that was asked for (Ctrl-C, a scheduler's SIGTERM) or a database away says nothing
        # against the configuration: it never counts towards dropping it.
        evidence = not isinstance(cause, (KeyboardInterrupt, StorageError))
        with contextlib.suppress(Exception):  # best effort: if this fails, the next run reaps it
            close_trial(self.search.study, seam.frozen(self.search.study, self.trial), reason, retry=True,
                        evidence=evidence)


def close_trial(study: optuna.Study, trial: FrozenTrial, reason: str, *, retry: bool,
                evidence: bool = True) -> tuple[bool, str]:
    """Fail a RUNNING trial with its reason and, if wanted and allowed, queue its configuration again.

    Returns (whether this call failed it, the reason recorded). The state change is a compare-and-set
    in the database, so when several workers find the same stale trial, exactly one closes and
    requeues it. Only a kill within the milliseconds between the two writes loses the retry (the
    study then samples a fresh configuration; counts are unaffected).

    The configuration is dropped only on evidence against it: MAX_STALLED_RETRIES + 1 cut-offs in a
    row of attempts that each ended before finishing an epoch (the curve, written at every epoch end,
    is how any worker on any host sees that an attempt finished one; a retry resumes from the
    checkpoint written right after it). A cut-off after progress resets the count, so kills of
    workers or hosts never drop a configuration that advances between them; each member of a
    pack counts its own cut-off once. evidence=False (a stop that was asked for, a database outage)
    never counts.
    """
    history = [*trial.user_attrs.get(RETRY_ATTR, []), trial.number]
    stalls = int(trial.user_attrs.get(STALLS_ATTR, 0))
    if trial.user_attrs.get(CURVE_KEY):  # this attempt finished an epoch (its curve is written at each epoch end)
        stalls = 0
    elif evidence:
        stalls += 1
    requeue = retry and bool(trial.params) and stalls <= MAX_STALLED_RETRIES
    if retry and not trial.params:
        reason += "; it stopped before its configuration was stored, so a new one is sampled"
    elif retry and not requeue:
        reason += (f"; configuration dropped: its last {stalls} attempts were cut off before finishing an epoch "
                   "(out of memory, or too slow for its worker's time)")
    elif requeue:
        reason += "; retried with the same configuration"
    storage, trial_id = seam.storage(study), seam.trial_id(trial)
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False, reason
    except UpdateFinishedTrialError:
        return False, reason  # another worker got there first
    if requeue:  # the configuration is copied (see record.TrialRecord), the results are not
        attrs = {k: trial.user_attrs[k] for k in CONFIG_ATTRS if k in trial.user_attrs}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**attrs, RETRY_ATTR: history, STALLS_ATTR: stalls}))
    return True, reason


def run_trials(search: FamilySearch, runs: Sequence[TrialRun], executor: Executor) -> list[FrozenTrial]:
    """Claimed trials (claim_runs), begun and handed to the executor together (several: a pack); each is told
    its own outcome. An exception (Ctrl-C, a storage error) closes every one of them for retry and propagates.
    """
    try:
        for run in runs:
            run.begin()
        outcomes = executor.run(runs)
    except BaseException as e:
        for run in runs:
            run.requeue(e)
        raise
    return [run.finish(outcome) for run, outcome in zip(runs, outcomes, strict=True)]


def sweep_checkpoints(search: FamilySearch) -> None:
    """Delete checkpoints left by trials that finished (e.g. killed between completing and cleaning up)."""
    study = search.study
    keep = {origin(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}
    checkpoint.sweep(search.cfg.study_dir, search.family, keep)
