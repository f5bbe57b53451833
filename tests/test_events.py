"""Reporter events cross process boundaries under `run --workers`: each must pickle and keep its fields."""

from __future__ import annotations

import pickle

import optuna
import pandas as pd

from hgsearch.events import Done, Note, Progress, RunEnd, RunStart, SeedsStart, Start, TrialEnd, TrialStart, from_worker
from hgsearch.model.families import ArchSpec


def test_every_event_pickles_and_workers_tag_the_ones_that_say_who():
    study = optuna.create_study(directions=["minimize", "maximize"])
    trial = study.ask()
    study.tell(trial, [1.0, 2.0])
    spec = ArchSpec("hourglass", 36, 144, 200, 17, 3)
    row = pd.Series({"family": "hourglass", "trial": 3, "params": 100})
    events = [Note("n"), Start("s", "sqlite:///x", 5, {"hourglass": 1}), TrialStart("hourglass", 0, spec, 1e-3, [], 0),
              Progress("hourglass", 0, 2, 5, 10, 0.1), TrialEnd("hourglass", study.trials[0], None), Done(1.5),
              SeedsStart("s.seeds", "sqlite:///x"), RunStart(row, 1, 0, 2), RunEnd(row, 1, None, 20.0, 19.0, 3.0)]
    for ev in events:
        back = pickle.loads(pickle.dumps(ev))
        assert type(back) is type(ev)
        tagged = from_worker(back, 2)
        assert getattr(tagged, "worker", 2) == 2
        assert (tagged is back) == (not hasattr(ev, "worker"))
    assert pickle.loads(pickle.dumps(events[4])).trial.values == [1.0, 2.0]
