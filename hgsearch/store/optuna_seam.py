"""Every use of Optuna's private API, in one place (tests/test_optuna_seam.py fails when one goes).

Why private at all: claiming trials among many workers needs what Study.ask/tell do not expose:
a new trial created through the study's storage (the retrying one, which tags it with a claim token:
resilient.py), a queued retry popped with a compare-and-set, the stale-heartbeat query without
Optuna failing the trials itself, and the state change as a compare-and-set that tells which worker
won; and learning curves as intermediate values, which Trial.report refuses in multi-objective
studies. Public API is used everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import optuna.storages._heartbeat
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

# The retrying storage (resilient.py) wraps RDBStorage in Optuna's own cache, as optuna.create_study
# does, and must be a BaseHeartbeat for Optuna's heartbeat checks to reach the wrapped storage.
CachedStorage = optuna.storages._CachedStorage
BaseHeartbeat = optuna.storages._heartbeat.BaseHeartbeat

# (object, attribute) pairs this module relies on; the seam test checks each on the installed Optuna.
PRIVATE_NAMES = (
    ("Study", "_storage"), ("Study", "_study_id"), ("Study", "_pop_waiting_trial_id"), ("Study", "_thread_local"),
    ("Trial", "_trial_id"), ("FrozenTrial", "_trial_id"), ("RDBStorage", "_get_stale_trial_ids"),
    ("optuna.storages", "_CachedStorage"), ("optuna.storages._heartbeat", "BaseHeartbeat"),
)


def storage(study: optuna.Study) -> BaseStorage:
    """The study's storage object (Trial has a public .storage; Study has none)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (unique across studies; trial.number is per study)."""
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now (its state may have been changed by another worker)."""
    return study._storage.get_trial(trial._trial_id)


def create_running_trial(study: optuna.Study, template: FrozenTrial | None = None) -> int:
    """A new RUNNING trial, from a template when given (its user attrs in the same transaction)."""
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def pop_waiting_trial(study: optuna.Study) -> int | None:
    """Claim a queued (WAITING) trial as RUNNING, compare-and-set, as Study.ask does; None if none."""
    return study._pop_waiting_trial_id()


def forget_cached_trials(study: optuna.Study) -> None:
    """As Study.ask does before sampling: the sampler must see the latest trials, not this thread's cache."""
    study._thread_local.cached_all_trials = None


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials whose last heartbeat is older than the storage's grace period."""
    return set(study._storage._get_stale_trial_ids(study._study_id))


def set_intermediate_values(trial: optuna.Trial, values: Sequence[float]) -> None:
    """values[i] as the trial's intermediate value at step i + 1, written through the trial's storage.

    Trial.report raises NotImplementedError in a multi-objective study; the storage's own write does not.
    """
    for step, value in enumerate(values, start=1):
        trial.storage.set_trial_intermediate_value(trial._trial_id, step, float(value))
