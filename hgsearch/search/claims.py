"""Claiming trials among any number of workers: exact counts, dead workers' trials closed and retried."""

from __future__ import annotations

import contextlib
import random
import time
from enum import Enum

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch.events import Note
from hgsearch.search.context import FamilySearch
from hgsearch.search.liveness import this_worker, who, worker_gone
from hgsearch.stop import check_stop
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import (
    CLAIMED_BY_ATTR,
    CURVE_KEY,
    FINISHED,
    REASON_ATTR,
    RETRY_ATTR,
    STALLS_ATTR,
    WORKER_ATTR,
)
from hgsearch.store.storage import GRACE_PERIOD
from hgsearch.training.record import CONFIG_ATTRS

# A configuration whose attempts are cut off this many times in a row without finishing an epoch is
# retried no more: the evidence says it is the cause (it gets its process OOM-killed, hangs its worker).
# Cut-offs of attempts that finished an epoch never count: a preemptible host may cut a long trial off
# any number of times, and each retry resumes from its checkpoint.
MAX_STALLED_RETRIES = 3


class Claim(Enum):
    """claim's answer when it claims no trial."""

    DONE = "done"  # the family has its target of finished trials
    WAIT = "wait"  # other workers hold the last trials of the family: look again later


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


def reap(search: FamilySearch) -> None:
    """Close the RUNNING trials whose worker is gone and queue them again (see search.run's module docstring)."""
    study = search.study
    stale = seam.stale_trial_ids(study)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if seam.trial_id(t) in stale:
            why = f"no heartbeat for over {GRACE_PERIOD} s from its worker {who(worker)}"
        elif worker_gone(worker):
            why = f"its worker {who(worker)} is gone (killed or crashed)"
        elif worker is None and (worker_gone(t.user_attrs.get(CLAIMED_BY_ATTR)) or (
                t.datetime_start and now - t.datetime_start.timestamp() > GRACE_PERIOD)):
            # Killed between its claim and its first heartbeat: at once when it was claimed on this host (a
            # trial RUNNING without a configuration holds a place in the sequence of draws: sampler.draw_index).
            why = "its worker stopped before recording itself"
        else:
            continue
        closed, reason = close_trial(study, t, f"interrupted: {why}", retry=True)
        if closed:
            search.reporter(Note(f"{search.family} trial #{t.number}: {reason}"))


def ask(study: optuna.Study, *, retry_only: bool = False, new_only: bool = False) -> optuna.Trial | None:
    """study.ask(): a queued retry first (popped with a compare-and-set), else a new trial.

    retry_only: only a queued retry, None when another worker popped it first (creating a trial then
    would only make a surplus one). new_only: a new trial even when retries are queued.

    A new trial has no configuration yet: its owner draws one (trial.TrialRun.begin, sampler.draw).

    A new trial names only the process that claimed it (CLAIMED_BY_ATTR), no worker yet: its owner
    (trial.TrialRun.start) starts its heartbeat first and then records itself, so a trial that names
    its worker always has a heartbeat, which Optuna finds stale when that worker dies on another host;
    one that names none is closed GRACE_PERIOD after it started, or at once by a process on the
    claimer's host that finds the claimer gone (reap).
    """
    trial_id = None if new_only else seam.pop_waiting_trial(study)
    if trial_id is None and retry_only:
        return None
    if trial_id is None:
        claimed = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={CLAIMED_BY_ATTR: this_worker()})
        trial_id = seam.create_running_trial(study, claimed)
    seam.forget_cached_trials(study)
    return optuna.Trial(study, trial_id)


COUNTED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # trials towards the target, finished or not


def claim(search: FamilySearch, only: str | None = None) -> optuna.Trial | Claim:
    """A RUNNING trial of ours towards the target, Claim.DONE when the family is done, or Claim.WAIT.

    only="queued": a queued trial (a retry) or WAIT; only="new": a new trial or WAIT (trial.claim_runs
    keeps a pack's batch of new configurations apart from retries).

    The target counts finished trials: COMPLETE and PRUNED (stopped early, as final as COMPLETE,
    never retried), so compute stays bounded by trials x epochs (notes/early-stopping.md).
    No overshoot, with any number of workers. Optuna creates trials one at a time (it locks the study
    row to number them), so a trial's number orders the creations: every trial numbered below one is
    committed before that one exists. A worker keeps a trial it holds (new, or a popped retry) only
    if, reading the study afterwards, it sees fewer than cfg.trials trials numbered below it that
    are COMPLETE, PRUNED, RUNNING or WAITING. Of any cfg.trials + 1 kept trials, the highest-numbered
    would have seen the others (each created before it and counted from then on: a FAIL is final,
    and a trial closed as stale cannot complete afterwards, tell refuses) and given up. The losers
    give up (FAIL, reason "surplus") and back off a random moment; being the highest-numbered, they
    are exactly the trials past the target. (Giving up when the study's total passed the target, as
    this did before, let every racer give up at once, again and again: 200 workers through pgbouncer
    left 3,758 surplus FAILs and 17 trials short after 600 s.)
    """
    study, target = search.study, search.cfg.trials
    while True:
        check_stop()
        reap(search)
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED for t in trials)
        active = sum(t.state in COUNTED for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= target:
            return Claim.DONE
        if active >= target and not waiting:
            return Claim.WAIT
        if only == "new" and active >= target:
            return Claim.WAIT
        # At the target only the queued retries remain to be taken: pop one or wait, never create a
        # trial (with hundreds of workers, all but one would be surplus on every queued retry).
        trial = ask(study, retry_only=active >= target or only == "queued", new_only=only == "new")
        if trial is None:
            return Claim.WAIT
        try:
            ahead = sum(t.state in COUNTED and t.number < trial.number for t in study.get_trials(deepcopy=False))
            if ahead < target:
                return trial
            close_trial(study, seam.frozen(study, trial),
                        "surplus: other workers claimed the last trials at the same moment", retry=False)
        except BaseException:
            with contextlib.suppress(Exception):
                close_trial(study, seam.frozen(study, trial), "interrupted while claiming", retry=True)
            raise
        time.sleep(random.uniform(0.05, 0.5))
