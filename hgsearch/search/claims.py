"""Claiming trials among any number of workers: exact counts, dead workers' trials closed and retried."""

from __future__ import annotations

import contextlib
import random
import time
from enum import Enum

import optuna
from optuna.trial import TrialState

from hgsearch.events import Note
from hgsearch.search.context import FamilySearch
from hgsearch.search.liveness import this_worker, who, worker_gone
from hgsearch.search.sampler import draw_index
from hgsearch.search.trial import EpochHook, TrialRun, close_trial, keep_going
from hgsearch.stop import check_stop
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import CLAIMED_BY_ATTR, FINISHED, WORKER_ATTR
from hgsearch.store.storage import GRACE_PERIOD


class Claim(Enum):
    """claim's answer when it claims no trial."""

    DONE = "done"  # the family has its target of finished trials
    WAIT = "wait"  # other workers hold the last trials of the family: look again later


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

    only="queued": a queued trial (a retry) or WAIT; only="new": a new trial or WAIT (claim_runs
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
    are exactly the trials past the target. (Giving up when the study's total is past the target would
    let every racer give up at once, again and again: with hundreds of workers, thousands of surplus
    FAILs and a family still short of its target.)
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


def claim_runs(search: FamilySearch, k: int, on_epoch: EpochHook = keep_going) -> list[TrialRun] | Claim:
    """Up to k trials claimed one by one (claim: never past the target), or claim's answer when not even
    one can be claimed now.

    Each is owned by its trial.TrialRun from its claim, its heartbeat beating before the next is claimed, so
    the first trials of a large pack never look dead while the others are claimed (claims take seconds
    each with hundreds of workers). Cut off while claiming, the ones claimed are queued again. A pack
    holds either queued trials (retries) or new ones, and new ones of one batch of draws only (places
    b*k .. (b+1)*k - 1, sampler.history): so a resumed run draws its configurations from the same
    histories as an uninterrupted one, whatever the interruption left to retry.
    """
    runs: list[TrialRun] = []
    queued = False
    try:
        while len(runs) < k:
            trial = claim(search, only=None if not runs else ("queued" if queued else "new"))
            if isinstance(trial, Claim):
                return runs or trial
            run = TrialRun(search, trial, on_epoch)
            runs.append(run)  # before start: cut off inside it, the trial is queued again like the others
            if not run.start():
                runs.pop()
                continue
            frozen = seam.frozen(search.study, trial)
            if len(runs) == 1:
                queued = bool(frozen.params) or "fixed_params" in frozen.system_attrs
            if not queued and (draw_index(search.study.get_trials(deepcopy=False), trial.number) + 1) % k == 0:
                break  # the last place of its batch
    except BaseException as e:
        for run in runs:
            run.requeue(e)
        raise
    return runs
