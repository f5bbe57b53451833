"""Optuna's private API that hgsearch relies on (hgsearch/optuna_seam.py) must exist and behave.

When an Optuna upgrade removes or changes one of these, this test fails by name: update
optuna_seam.py (and the upper bound on optuna in pyproject.toml) together.
"""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from hgsearch.store import optuna_seam as seam

# hgsearch runs its own heartbeat thread with ask/tell (see claims.Heartbeat), which Optuna warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


@pytest.fixture
def study(tmp_path):
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db'}", heartbeat_interval=1, grace_period=3)
    return optuna.create_study(storage=storage, directions=["minimize", "maximize"])


@pytest.mark.parametrize("owner,name", seam.PRIVATE_NAMES)
def test_every_private_name_exists(study, owner, name):
    trial = study.ask()
    instance = {"Study": study, "Trial": trial, "FrozenTrial": study.trials[0], "RDBStorage": study._storage,
                "optuna.storages": optuna.storages, "optuna.storages._heartbeat": optuna.storages._heartbeat}[owner]
    assert hasattr(instance, name), (
        f"optuna {optuna.__version__} has no {owner}.{name}: update hgsearch/optuna_seam.py")


def test_the_seam_works_on_a_real_storage(study):
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"worker": "w"})
    tid = seam.create_running_trial(study, template)
    trial = optuna.Trial(study, tid)
    assert seam.trial_id(trial) == tid == seam.trial_id(seam.frozen(study, trial))
    assert seam.frozen(study, trial).user_attrs == {"worker": "w"}  # created with its attrs
    assert seam.frozen(study, trial).state == TrialState.RUNNING

    study.enqueue_trial({})
    waiting = seam.pop_waiting_trial(study)
    assert waiting is not None and seam.storage(study).get_trial(waiting).state == TrialState.RUNNING
    assert seam.pop_waiting_trial(study) is None  # nothing left in the queue

    study.get_trials()  # fills this thread's cache
    seam.storage(study).set_trial_user_attr(tid, "x", 1)
    seam.forget_cached_trials(study)
    assert study.get_trials()[0].user_attrs["x"] == 1

    seam.storage(study).record_heartbeat(tid)
    assert seam.stale_trial_ids(study) == set()
    time.sleep(4.5)  # past the 3 s grace period: SQLite stores whole seconds, so up to 1 s more
    assert tid in seam.stale_trial_ids(study)
