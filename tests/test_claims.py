"""Claims racing at the target (the lowest-numbered contenders keep their trials) and telling a dead worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.events import quiet
from hgsearch.search import claims
from hgsearch.search.claims import Claim, claim
from hgsearch.search.context import FamilySearch

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _search(tmp_path, trials: int) -> FamilySearch:
    from hgsearch.store.storage import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="race.hourglass", directions=["minimize", "maximize"])
    cfg = RunConfig(budget=100_000, trials=trials, results_dir=str(tmp_path), study="race")
    return FamilySearch(study, cfg, "hourglass", None, quiet)  # type: ignore[arg-type]  # claims read no data


def test_a_rival_created_after_ours_does_not_make_us_give_up(tmp_path, monkeypatch):
    """Two of three trials held; we create #2, then a rival worker creates #3 before our recount. The study
    now has 4 active trials for a target of 3: the surplus one is the rival's (numbered after ours), so we
    keep #2. Giving up on the total (the old rule) failed #2 and left us waiting."""
    search = _search(tmp_path, trials=3)
    for _ in range(2):
        claims.ask(search.study)
    real_ask, rivals = claims.ask, []

    def ask_then_a_rival(*args, **kwargs):
        ours = real_ask(*args, **kwargs)
        rivals.append(real_ask(search.study))
        return ours

    monkeypatch.setattr(claims, "ask", ask_then_a_rival)
    got = claim(search)
    assert not isinstance(got, Claim) and got.number == 2, got
    trials = {t.number: t for t in search.study.get_trials()}
    assert trials[2].state == TrialState.RUNNING and "fail_reason" not in trials[2].user_attrs
    # The rival's own recount sees 3 active trials numbered below it: it is the one past the target.
    assert [t.number for t in rivals] == [3]
    assert sum(t.state in claims.COUNTED and t.number < 3 for t in trials.values()) == 3


def test_racers_past_the_target_give_up_and_the_rest_keep(tmp_path, monkeypatch):
    """Five workers (threads) each see 1 of 3 places taken and create a trial at the same moment, then
    recount: the two lowest-numbered new trials are kept, the other three fail once as surplus and their
    workers wait. (The old rule saw 6 active trials, failed all five and asked again.)"""
    search = _search(tmp_path, trials=3)
    claims.ask(search.study)
    real_ask, together, asked = claims.ask, threading.Barrier(5, timeout=60), []

    def ask_together(*args, **kwargs):
        asked.append(1)
        if len(asked) > 5:
            raise RuntimeError("a worker asked again after the race")
        together.wait()  # every racer has seen the places free before anyone creates a trial
        trial = real_ask(*args, **kwargs)
        together.wait()  # ... and has created its trial before anyone recounts
        return trial

    monkeypatch.setattr(claims, "ask", ask_together)
    monkeypatch.setattr(claims.time, "sleep", lambda s: None)
    with ThreadPoolExecutor(5) as pool:
        got = list(pool.map(lambda _: claim(search), range(5)))
    kept = sorted(g.number for g in got if not isinstance(g, Claim))
    assert kept == [1, 2] and got.count(Claim.WAIT) == 3, got
    states = {t.number: t.state for t in search.study.get_trials()}
    assert sorted(n for n, s in states.items() if s == TrialState.FAIL) == [3, 4, 5], states


def test_a_killed_worker_not_yet_collected_by_its_parent_is_gone(tmp_path):
    """A worker killed with SIGKILL whose parent has not waited for it yet is a zombie: its pid and start
    time are still in /proc. Its trials are dead all the same; seen alive, one that never beat was never
    reaped (bench/load_test.py's run timed out with a RUNNING trial on CI)."""
    import os
    import signal
    import socket
    import subprocess

    from hgsearch.search import liveness

    child = subprocess.Popen(["sleep", "60"])
    worker = {"host": socket.gethostname(), "boot": liveness._boot_id(), "pid": child.pid,
              "start": liveness._proc_start(child.pid)}
    try:
        assert worker["start"] is not None and not liveness.worker_gone(worker)
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(100):  # the kernel marks it a zombie within moments; nobody waits for it yet
            if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert liveness.worker_gone(worker)
    finally:
        child.kill()
        child.wait()
    assert liveness.worker_gone(worker)  # collected: no /proc entry at all
