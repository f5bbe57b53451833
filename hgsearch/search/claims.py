"""Claiming trials among any number of workers: exact counts, heartbeats, dead workers' trials retried."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch.config import RunConfig
from hgsearch.events import Note, Reporter
from hgsearch.search.sampler import make_sampler
from hgsearch.stop import check_stop
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import FINISHED, RETRY_ATTR, WORKER_ATTR
from hgsearch.store.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from hgsearch.training.record import CONFIG_ATTRS

MAX_RETRIES = 3  # a configuration cut off more often than this (e.g. it gets the process OOM-killed) is dropped






def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a live pid from a reused one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _worker_gone(worker: Any) -> bool:
    """True when the worker ran on this machine and its process no longer exists (no need to wait)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False  # another machine: only its heartbeat can tell
    if worker.get("boot") != _boot_id():
        return True  # this machine rebooted since
    if worker.get("pid") == os.getpid():
        return False
    if worker.get("start") is None or not Path("/proc").is_dir():
        try:
            os.kill(int(worker["pid"]), 0)
            return False
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError):
            return False
    return _proc_start(int(worker["pid"])) != worker["start"]


class Heartbeat:
    """Records a trial's heartbeat every HEARTBEAT_INTERVAL s from a daemon thread.

    We use ask/tell, not study.optimize (which runs Optuna's own heartbeat thread), because the run
    loop must count and claim a trial before asking (no overshoot with many workers), queue a
    cut-off trial for retry with its checkpoint, and stop between steps on a signal. Unlike Optuna's
    thread, this one is a daemon (a hung storage cannot keep a stopping process alive) and survives
    transient storage errors (a missed beat is retried next interval).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stopped.wait(HEARTBEAT_INTERVAL):
                return

    def start(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)  # the first beat before any work
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()


def close_trial(study: optuna.Study, trial: FrozenTrial, reason: str, *, retry: bool) -> tuple[bool, str]:
    """Fail a RUNNING trial with its reason and, if wanted and allowed, queue its configuration again.

    Returns (whether this call failed it, the reason recorded). The state change is a compare-and-set
    in the database, so when several workers find the same stale trial, exactly one closes and
    requeues it. Only a kill within the milliseconds between the two writes loses the retry (the
    study then samples a fresh configuration; counts are unaffected).
    """
    history = [*trial.user_attrs.get(RETRY_ATTR, []), trial.number]
    requeue = retry and bool(trial.params) and len(history) <= MAX_RETRIES
    if retry and not trial.params:
        reason += "; it stopped before its configuration was stored, so a new one is sampled"
    elif retry and not requeue:
        reason += f"; configuration dropped after {MAX_RETRIES} retries"
    elif requeue:
        reason += "; retried with the same configuration"
    storage, trial_id = seam.storage(study), seam.trial_id(trial)
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False, reason
    except UpdateFinishedTrialError:
        return False, reason  # another worker got there first
    if requeue:  # the configuration is copied (see record.TrialRecord), the results are not
        attrs = {k: trial.user_attrs[k] for k in CONFIG_ATTRS if k in trial.user_attrs}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**attrs, RETRY_ATTR: history}))
    return True, reason


def reap(study: optuna.Study, family: str, reporter: Reporter) -> None:
    """Close the RUNNING trials whose worker is gone and queue them again (see the module docstring)."""
    stale = seam.stale_trial_ids(study)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if seam.trial_id(t) in stale:
            why = f"no heartbeat for over {GRACE_PERIOD} s from its worker {_who(worker)}"
        elif _worker_gone(worker):
            why = f"its worker {_who(worker)} is gone (killed or crashed)"
        elif worker is None and t.datetime_start and now - t.datetime_start.timestamp() > GRACE_PERIOD:
            why = "its worker stopped before recording itself"  # killed between ask and the first write
        else:
            continue
        closed, reason = close_trial(study, t, f"interrupted: {why}", retry=True)
        if closed:
            reporter(Note(f"{family} trial #{t.number}: {reason}"))


def _who(worker: Any) -> str:
    return f"{worker.get('host')}:{worker.get('pid')}" if isinstance(worker, dict) else "(unknown)"


def ask(study: optuna.Study, sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None) -> optuna.Trial:
    """study.ask() (a queued retry first, else a new trial) that records this worker on the trial.

    sampler_for(trial number) gives the sampler that samples it: seeded by the trial's own number,
    unique in the study, workers that ask at the same moment (as after a database outage, which
    releases them together) never draw the same configuration.

    A new trial is created with its worker attribute in the same transaction (Optuna's own
    create_new_trial with a template), so no kill can leave a RUNNING trial that nobody can tell
    dead or alive; a popped retry gets it one write later (a kill in between costs a 60 s wait).
    """
    trial_id = seam.pop_waiting_trial(study)
    if trial_id is None:
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={WORKER_ATTR: this_worker()})
        trial_id = seam.create_running_trial(study, template)
    else:
        seam.storage(study).set_trial_user_attr(trial_id, WORKER_ATTR, this_worker())
    seam.forget_cached_trials(study)
    if sampler_for is not None:
        study.sampler = sampler_for(seam.storage(study).get_trial_number_from_id(trial_id))
    return optuna.Trial(study, trial_id)


WAIT = object()  # claim's answer while other workers hold the last trials of a family


COUNTED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)  # trials towards the target, finished or not


def claim(study: optuna.Study, cfg: RunConfig, family: str, reporter: Reporter) -> optuna.Trial | None | object:
    """A RUNNING trial of ours towards the target, None when the family is done, or WAIT.

    The target counts finished trials: COMPLETE and PRUNED (stopped early, as final as COMPLETE,
    never retried), so compute stays bounded by trials x epochs (notes/early-stopping.md).
    No overshoot, with any number of workers: a worker keeps a trial only if, reading the study
    after its trial became RUNNING, it sees at most cfg.trials trials that are COMPLETE, PRUNED,
    RUNNING or WAITING. Of any N+1 trials that would complete, the one whose read came last would have seen
    all the others (each RUNNING or COMPLETE from before its own read onwards) and given up. A trial
    closed as stale cannot complete afterwards (tell refuses), so it cannot add to the count either.
    The losers of a tie give up (FAIL, reason "surplus") and back off a random moment.
    """
    while True:
        check_stop()
        reap(study, family, reporter)
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED for t in trials)
        active = sum(t.state in COUNTED for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= cfg.trials:
            return None
        if active >= cfg.trials and not waiting:
            return WAIT
        trial = ask(study, lambda number: make_sampler(cfg, family, number))
        try:
            trials = study.get_trials(deepcopy=False)
            active = sum(t.state in COUNTED for t in trials)
            if active <= cfg.trials:
                return trial
            close_trial(study, seam.frozen(study, trial),
                        "surplus: other workers claimed the last trials at the same moment", retry=False)
        except BaseException:
            with contextlib.suppress(Exception):
                close_trial(study, seam.frozen(study, trial), "interrupted while claiming", retry=True)
            raise
        time.sleep(random.uniform(0.05, 0.5))
