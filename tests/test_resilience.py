"""Kill it any time, lose nothing: SIGKILL/SIGINT of a real `hgsearch run`, stale trials, retries, checkpoints."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import load_task
from hgsearch.errors import StudyMismatchError
from hgsearch.events import Note, quiet
from hgsearch.model import space
from hgsearch.model.families import ArchSpec
from hgsearch.search import claims, testhooks
from hgsearch.search import run as search
from hgsearch.search.claims import Claim
from hgsearch.search.context import FamilySearch
from hgsearch.search.liveness import this_worker
from hgsearch.search.trial import MAX_STALLED_RETRIES, close_trial
from hgsearch.store import schema, storage
from hgsearch.training import checkpoint
from hgsearch.training.loop import train
from tests.conftest import (
    RUN_STUDY,
    finish_run,
    make_idx_dataset,
    run_checkpoints,
    run_trials,
    start_run,
    state_counts,
    wait_for,
    wait_marker,
)


def complete_values(by_family: dict) -> dict[tuple[str, int], list[float]]:
    return {(f, t.number): t.values for f, ts in by_family.items() for t in ts if t.state == TrialState.COMPLETE}


def retrain(t: optuna.trial.FrozenTrial, data_dir: Path) -> float:
    """The validation PSNR an uninterrupted run of this trial's configuration gives."""
    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(data_dir), epochs=2)
    data = load_task(cfg)
    a = t.user_attrs
    spec = ArchSpec(a["family"], a["d_in"], a["d_out"], a["width"], a["bottleneck"], a["depth"], a["fixed_win"])
    return train(spec, data, lr=a["lr"], epochs=2, seed=a["seed"])[1].psnr_val


@pytest.mark.slow
@pytest.mark.parametrize("point,family", [("epoch:2", "both"), ("eval:2", "hourglass"),
                                          ("complete:1", "hourglass"), ("claimed:2", "hourglass")])
def test_sigkill_then_same_command_loses_nothing(point, family, tiny_idx, tmp_path):
    n = 2
    proc = start_run(tmp_path, tiny_idx, "--trials", str(n), "--family", family, pause=point)
    point = point.split(":")[0]
    wait_marker(proc, f"HGSEARCH_PAUSED {point}")
    before = run_trials(tmp_path)
    proc.kill()
    proc.wait()
    running = [(f, t) for f, ts in before.items() for t in ts if t.state == TrialState.RUNNING]
    if point == "complete":
        assert not running and run_checkpoints(tmp_path)  # completed, its checkpoint not yet removed
    else:
        assert len(running) == 1
        assert bool(run_checkpoints(tmp_path)) == (point in ("epoch", "eval"))

    finish_run(tmp_path, tiny_idx, "--trials", str(n), "--family", family)
    after = run_trials(tmp_path)
    for _fam, ts in after.items():
        counts = state_counts(ts)
        assert counts.get("COMPLETE") == n and "RUNNING" not in counts and "WAITING" not in counts
    old = complete_values(before)
    assert old and {k: v for k, v in complete_values(after).items() if k in old} == old  # kept their values
    assert run_checkpoints(tmp_path) == []
    if point == "complete":
        assert all(t.state == TrialState.COMPLETE for ts in after.values() for t in ts)  # not trained twice
        return
    fam, killed = running[0]
    dead = next(t for t in after[fam] if t.number == killed.number)
    assert dead.state == TrialState.FAIL and "is gone" in dead.user_attrs["fail_reason"]
    retries = [t for t in after[fam] if t.user_attrs.get("retry_of")]
    if point == "claimed":  # killed before its configuration was stored: nothing to retry
        assert not retries and "new one is sampled" in dead.user_attrs["fail_reason"]
        return
    (retry,) = retries
    assert retry.user_attrs["retry_of"] == [killed.number] and retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    # Continued from the checkpoint, it gives what an uninterrupted run of the configuration gives.
    assert retry.values[1] == pytest.approx(retrain(retry, tiny_idx), abs=1e-3)


@pytest.mark.slow
def test_sigint_stops_cleanly_and_resumes(tiny_idx, tmp_path):
    proc = start_run(tmp_path, tiny_idx, "--trials", "1", "--family", "hourglass", pause="epoch")
    wait_marker(proc, "HGSEARCH_PAUSED epoch")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130 and time.monotonic() - t0 < 10
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGINT; the study is consistent")
    assert "Resume with: hgsearch run --budget 100K" in err
    ts = run_trials(tmp_path)["hourglass"]
    assert state_counts(ts) == {"FAIL": 1, "WAITING": 1}  # nothing left RUNNING; the retry is queued
    assert "interrupted by SIGINT" in ts[0].user_attrs["fail_reason"]
    assert run_checkpoints(tmp_path) == ["hourglass-0.pt"]  # kept for the retry
    finish_run(tmp_path, tiny_idx, "--trials", "1", "--family", "hourglass")
    ts = run_trials(tmp_path)["hourglass"]
    assert state_counts(ts) == {"FAIL": 1, "COMPLETE": 1} and ts[1].params == ts[0].params
    assert run_checkpoints(tmp_path) == []


@pytest.mark.slow
def test_second_sigint_exits_at_once_and_stays_consistent(tiny_idx, tmp_path):
    proc = start_run(tmp_path, tiny_idx, "--trials", "1", "--family", "hourglass", pause="epoch")
    wait_marker(proc, "HGSEARCH_PAUSED epoch")
    proc.send_signal(signal.SIGTERM)
    wait_marker(proc, "stopping after the current step")
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=10) in (130, 143) and "Traceback" not in err
    finish_run(tmp_path, tiny_idx, "--trials", "1", "--family", "hourglass")
    assert state_counts(run_trials(tmp_path)["hourglass"]).get("COMPLETE") == 1
    assert "RUNNING" not in state_counts(run_trials(tmp_path)["hourglass"])


# Preemption is not a crash: a configuration is dropped only when its attempts make no progress.

def _cut_off(study: optuna.Study, progress: bool, **kw) -> tuple[bool, str]:
    """Pop the queued attempt (or start the first), let it finish an epoch or not, then cut it off."""
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    trial = study.ask() if waiting else study.ask({"depth": optuna.distributions.IntDistribution(1, 8)})
    if not waiting:
        trial.set_user_attr("family", "hourglass")
    if progress:  # an epoch finished: its curve is written (epoch_hook), then its checkpoint
        trial.set_user_attr(schema.CURVE_KEY, [20.0])
    return close_trial(study, study.trials[-1], "interrupted: its worker is gone", retry=True, **kw)


def _chain_states(study: optuna.Study) -> dict[str, int]:
    return state_counts(study.get_trials())


def test_cut_offs_after_progress_never_drop_the_configuration():
    study = optuna.create_study(storage="sqlite:///:memory:", directions=schema.DIRECTIONS)
    for _ in range(3 * MAX_STALLED_RETRIES):
        closed, reason = _cut_off(study, progress=True)
        assert closed and reason.endswith("retried with the same configuration")
    # ... and stalls only count in a row: progress in between resets them.
    for progress in [False] * MAX_STALLED_RETRIES + [True] + [False] * MAX_STALLED_RETRIES:
        assert _cut_off(study, progress)[1].endswith("retried with the same configuration")
    assert _chain_states(study)["WAITING"] == 1
    assert len({str(t.params) for t in study.get_trials()}) == 1


def test_a_configuration_that_never_progresses_is_dropped_after_the_limit():
    study = optuna.create_study(storage="sqlite:///:memory:", directions=schema.DIRECTIONS)
    for _ in range(MAX_STALLED_RETRIES):
        assert _cut_off(study, progress=False)[1].endswith("retried with the same configuration")
    closed, reason = _cut_off(study, progress=False)
    assert closed and "configuration dropped: its last 4 attempts were cut off before finishing an epoch" in reason
    assert _chain_states(study) == {"FAIL": MAX_STALLED_RETRIES + 1}
    assert study.trials[-1].user_attrs[schema.STALLS_ATTR] == MAX_STALLED_RETRIES


def test_a_stop_that_was_asked_for_never_counts_against_the_configuration():
    study = optuna.create_study(storage="sqlite:///:memory:", directions=schema.DIRECTIONS)
    for _ in range(3 * MAX_STALLED_RETRIES):
        assert _cut_off(study, progress=False, evidence=False)[1].endswith("retried with the same configuration")
    assert _chain_states(study)["WAITING"] == 1


SLOW_EPOCHS = "[run]\nbatch_size = 16\n"  # 500 steps per epoch on 8,000 images: an epoch lasts ~1 s


def _attempt_with_an_epoch(db: Path, after: int) -> int | None:
    """The number of a RUNNING trial past `after` that has finished an epoch, if any."""
    if not db.exists():  # opening it here would race the run creating its tables
        return None
    try:
        ts = optuna.load_study(study_name=f"{RUN_STUDY}.hourglass", storage=f"sqlite:///{db}").get_trials()
    except KeyError:
        return None
    return next((t.number for t in ts if t.number > after and t.state == TrialState.RUNNING
                 and t.user_attrs.get(schema.CURVE_KEY)), None)


@pytest.mark.slow
def test_repeated_kill_9_drops_no_configuration_that_progresses(tmp_path):
    """Preempted five times, each attempt finishing an epoch before its kill: still the same configuration,
    completed (before the fix, the fourth kill dropped it and a fresh one was sampled)."""
    data = make_idx_dataset(tmp_path / "idx", n_train=8000)
    (tmp_path / "slow.toml").write_text(SLOW_EPOCHS)
    extra = ("--trials", "1", "--family", "hourglass", "--epochs", "12", "--config", str(tmp_path / "slow.toml"))
    db = tmp_path / "results" / RUN_STUDY / "study.db"
    kills, last = 5, -1
    for _ in range(kills):
        proc = start_run(tmp_path, data, *extra)
        try:
            wait_for(lambda p=proc, n=last: _attempt_with_an_epoch(db, n) is not None or p.poll() is not None,
                     120, "an epoch of the next attempt")
            assert proc.poll() is None, proc.stderr.read()
            last = _attempt_with_an_epoch(db, last)
            time.sleep(0.3)  # its checkpoint is written right after the curve
        finally:
            proc.kill()
            proc.wait()
    finish_run(tmp_path, data, *extra)
    ts = run_trials(tmp_path)["hourglass"]
    assert state_counts(ts) == {"FAIL": kills, "COMPLETE": 1}
    assert not [t.user_attrs["fail_reason"] for t in ts if "dropped" in t.user_attrs.get("fail_reason", "")]
    done = next(t for t in ts if t.state == TrialState.COMPLETE)
    assert done.user_attrs["retry_of"] == list(range(kills)) and all(t.params == done.params for t in ts)
    assert len(done.user_attrs[schema.CURVE_KEY]) == 12


# ---------------------------------------------------------------- in-process: stale trials, claims, checkpoints

def _cfg(tiny_idx: Path, tmp_path: Path, **kw) -> RunConfig:
    base = dict(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=1, epochs=1,
                results_dir=str(tmp_path / "results"), study="s")
    return RunConfig(**{**base, **kw})


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.slow
def test_stale_trial_of_a_dead_host_is_retried_not_counted(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path)
    study = search.run_search(cfg)["hourglass"]
    # A worker on another machine claimed a configuration, beat once, then its host vanished.
    orphan = study.ask()
    study._storage.set_trial_user_attr(orphan._trial_id, schema.WORKER_ATTR, {"host": "gone-host", "pid": 1})
    space.sample(orphan, "hourglass", cfg.budget, 36, 144, cfg.space, False)
    study._storage.record_heartbeat(orphan._trial_id)
    db = sqlite3.connect(tmp_path / "results" / "s" / "study.db")
    with db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour')")
    db.close()
    notes = []
    search.run_search(_cfg(tiny_idx, tmp_path, trials=2),
                      reporter=lambda e: notes.append(e) if isinstance(e, Note) else None)
    ts = study.get_trials()
    assert state_counts(ts) == {"COMPLETE": 2, "FAIL": 1}
    assert "no heartbeat for over 60 s from its worker gone-host:1" in ts[1].user_attrs["fail_reason"]
    assert ts[2].user_attrs["retry_of"] == [1] and ts[2].params == ts[1].params
    assert any("trial #1" in n.message for n in notes)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.slow
def test_live_trial_of_another_worker_is_waited_for(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path)
    study = search.run_search(cfg)["hourglass"]
    other = study.ask()  # another live worker (this process, so never "gone") holds the 2nd trial
    study._storage.set_trial_user_attr(other._trial_id, schema.WORKER_ATTR, this_worker())
    study._storage.record_heartbeat(other._trial_id)
    data = load_task(_cfg(tiny_idx, tmp_path))
    assert claims.claim(FamilySearch(study, _cfg(tiny_idx, tmp_path, trials=2), "hourglass", data, quiet)) is Claim.WAIT
    claimed = claims.claim(FamilySearch(study, _cfg(tiny_idx, tmp_path, trials=3), "hourglass", data, quiet))
    assert claimed.number == 2


def _race(url: str, target: int, seed: int) -> None:
    import random as _random

    _random.seed(seed)
    cfg = RunConfig(budget=100_000, trials=target, study="race")
    study = optuna.load_study(study_name="race.hourglass", storage=storage.make_storage(url))
    while True:
        trial = claims.claim(FamilySearch(study, cfg, "hourglass", None, quiet))  # claiming reads no data
        if trial is Claim.DONE:
            return
        if trial is Claim.WAIT:
            time.sleep(0.05)
            continue
        trial.suggest_float("x", 0, 1)
        time.sleep(_random.uniform(0, 0.02))
        study.tell(trial, [1.0, 1.0])


@pytest.mark.slow
def test_concurrent_workers_reach_exactly_the_target(tmp_path):
    """Three processes claim and finish trials as fast as they can on one SQLite file: no overshoot, no lock errors."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    optuna.create_study(study_name="race.hourglass", storage=storage.make_storage(url), directions=schema.DIRECTIONS)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_race, args=(url, 20, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    ts = optuna.load_study(study_name="race.hourglass", storage=url).get_trials()
    assert state_counts(ts).get("COMPLETE") == 20 and "RUNNING" not in state_counts(ts)
    assert all("surplus" in t.user_attrs["fail_reason"] for t in ts if t.state == TrialState.FAIL)


@pytest.mark.slow
def test_resume_with_other_settings_names_each_field(tiny_idx, tmp_path):
    search.run_search(_cfg(tiny_idx, tmp_path))
    with pytest.raises(StudyMismatchError) as e:
        search.run_search(_cfg(tiny_idx, tmp_path, epochs=2, fixed_win=True, trials=2))
    msg = str(e.value)
    assert "epochs (study: 1, now: 2)" in msg and "fixed_win (study: False, now: True)" in msg
    assert "--study s-2" in msg and "\n" not in msg
    # Harmless differences (device, more trials, another copy of the same data) resume fine.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_idx.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    search.run_search(_cfg(tiny_idx, tmp_path, trials=2, device="cpu", data_dir=str(copy)))


@pytest.mark.slow
def test_failed_trials_record_their_reason_and_the_study_goes_on(tiny_idx, tmp_path, monkeypatch):
    import hgsearch.training.loop as train_mod
    from hgsearch.results.trials import load_frontier, write_tables

    real_build, calls = train_mod.build, []

    class Broken(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind, self.w = kind, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            if self.kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return torch.full((x.shape[0], 144), float("nan")) * self.w

    def build(spec):
        calls.append(spec)
        return Broken(["oom", "nan"][len(calls) - 1]) if len(calls) <= 2 else real_build(spec)

    monkeypatch.setattr(train_mod, "build", build)
    search.run_search(_cfg(tiny_idx, tmp_path))
    fr = load_frontier("s", f"sqlite:///{tmp_path / 'results' / 's' / 'study.db'}")
    write_tables(fr, tmp_path / "out")
    rows = (tmp_path / "out" / "trials.csv").read_text()
    assert "out of memory on cpu" in rows and "non-finite training loss in epoch 1" in rows
    assert list(fr.trials["state"]) == ["FAIL", "FAIL", "COMPLETE"]


def test_checkpoint_resume_gives_the_uninterrupted_result(tiny_idx, tmp_path):
    data = load_task(_cfg(tiny_idx, tmp_path))
    spec = ArchSpec("hourglass", 36, 144, 150, 12, 2, False)
    path, meta = tmp_path / "c" / "t.pt", {"trial": 0}
    saved = []

    def keep_first(state):
        if state["epoch"] == 1:
            checkpoint.save(path, state, meta)
            saved.append(True)

    full = train(spec, data, lr=1e-3, epochs=3, on_epoch_end=keep_first)[1]
    state, why = checkpoint.load(path, meta)  # weights_only=True inside
    assert saved and why is None and state["epoch"] == 1
    resumed = train(spec, data, lr=1e-3, epochs=3, resume=state)[1]
    assert resumed.psnr_val == pytest.approx(full.psnr_val, abs=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["t.pt"]  # no temporary file left
    assert checkpoint.load(path, {"trial": 1}) == (None, f"checkpoint {path} belongs to another configuration; "
                                                   "starting the trial from epoch 0")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"meta": {}, "state": {"x": Evil()}}, path, pickle_protocol=2)
    state, why = checkpoint.load(path, {})
    assert state is None and "unreadable" in why and not (tmp_path / "pwned").exists()
    path.write_bytes(b"\x80\x04truncated")
    assert checkpoint.load(path, {})[0] is None


def test_pause_hook_is_inert_without_its_variable(monkeypatch):
    monkeypatch.delenv(testhooks.PAUSE_ENV, raising=False)
    t0 = time.monotonic()
    testhooks.pause_at("epoch")
    assert time.monotonic() - t0 < 0.1
