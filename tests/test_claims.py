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
from hgsearch.search.trial import close_trial

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


def _backdate_starts(tmp_path, seconds: int) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "study.db")
    with db:
        db.execute(f"UPDATE trials SET datetime_start = datetime(datetime_start, '-{seconds} seconds')")
    db.close()


def test_a_trial_whose_worker_died_on_another_host_before_its_first_heartbeat_is_retried(tmp_path, monkeypatch):
    """A worker on another host claims a trial and dies before its heartbeat's first beat (in a pack: while it
    claims the others). Nothing here can check its pid, and Optuna never finds a trial stale without a
    heartbeat, so naming its worker at creation (as claims did before) left it RUNNING for ever and the
    study waiting on it. Now a trial names its worker only after its first beat: one that names none is
    closed GRACE_PERIOD after it started."""
    import socket

    search = _search(tmp_path, trials=2)
    with monkeypatch.context() as m:
        m.setattr(socket, "gethostname", lambda: "another-host")
        orphan = claim(search)  # ... and its worker is gone before anything else
    assert not isinstance(orphan, Claim)
    claims.reap(search)
    assert search.study.get_trials()[0].state == TrialState.RUNNING  # within the grace period: waited for
    _backdate_starts(tmp_path, claims.GRACE_PERIOD + 5)
    claims.reap(search)
    [t] = search.study.get_trials()
    assert t.state == TrialState.FAIL, t.user_attrs
    assert "stopped before recording itself" in t.user_attrs["fail_reason"]


def test_a_packs_trials_beat_from_their_claim_and_name_their_worker_after_the_first_beat(tmp_path, monkeypatch):
    """claim_runs claims a pack's trials one by one; each one's heartbeat beats before the next is claimed, so
    slow claims (seconds each with hundreds of workers) never let the first ones look dead. A trial names its
    worker only once it has a heartbeat (what makes the rule of the test above safe for live workers)."""
    import sqlite3

    from hgsearch.store.schema import WORKER_ATTR

    search = _search(tmp_path, trials=3)
    seen: list[tuple[int, set[int], set[int]]] = []
    real_claim = claims.claim

    def claim_and_look(s, only=None):
        db = sqlite3.connect(tmp_path / "study.db")
        beating = {n for (n,) in db.execute("SELECT t.number FROM trials t JOIN trial_heartbeats h USING (trial_id)")}
        db.close()
        named = {t.number for t in s.study.get_trials() if WORKER_ATTR in t.user_attrs}
        seen.append((len(seen), beating, named))
        return real_claim(s, only)

    monkeypatch.setattr(claims, "claim", claim_and_look)
    runs = claims.claim_runs(search, 3)
    try:
        assert [r.trial.number for r in runs] == [0, 1, 2]
        assert seen == [(0, set(), set()), (1, {0}, {0}), (2, {0, 1}, {0, 1})]
        assert all(r.heartbeat.thread.is_alive() for r in runs)
        assert all(t.user_attrs[WORKER_ATTR]["host"] for t in search.study.get_trials())
    finally:
        for r in runs:
            r.heartbeat.stop()


def test_a_claimed_trial_another_worker_closed_meanwhile_is_let_go(tmp_path, monkeypatch):
    """A worker cut off from the database past the grace period between its claim and its first beat finds
    its trial closed by another worker: it lets that trial go and claims another, instead of crashing."""
    search = _search(tmp_path, trials=2)
    real_claim, closed = claims.claim, []

    def claim_then_reaped(s, only=None):
        got = real_claim(s, only)
        if not closed:
            closed.append(got.number)
            close_trial(s.study, s.study.get_trials()[got.number], "interrupted: reaped", retry=False)
        return got

    monkeypatch.setattr(claims, "claim", claim_then_reaped)
    runs = claims.claim_runs(search, 1)
    try:
        assert closed == [0] and [r.trial.number for r in runs] == [1]
        let_go = f"heartbeat-{search.study.get_trials()[0]._trial_id}"
        for _ in range(50):  # its heartbeat is stopped (the thread ends at its next wake-up: at once)
            if not any(t.name == let_go for t in threading.enumerate()):
                break
            time.sleep(0.02)
        assert not any(t.name == let_go for t in threading.enumerate())
    finally:
        for r in runs:
            r.heartbeat.stop()
