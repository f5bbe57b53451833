"""Faults of the infrastructure: lost answers, a database restarted or away too long, a flaky network, a full disk.

The PostgreSQL tests need HGSEARCH_TEST_POSTGRES and PGDATA (`.ci/postgres.sh` prints both; .ci/run
exports them): they stop and start that server. Without them they skip locally and fail in CI.
The full-disk tests mount a 2 MB tmpfs (root only; they skip otherwise).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.storages import RDBStorage, _CachedStorage
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from hgsearch.errors import StorageError
from hgsearch.store.atomic import atomic_open, atomic_write
from hgsearch.store.resilient import CLAIM_KEY, REACHED_ENV, ResilientStorage, wait_out
from hgsearch.store.schema import DIRECTIONS
from hgsearch.store.storage import safe_url
from tests.conftest import FAMILIES, assert_exactly, hgsearch, popen, states, wait_for
from tests.tcp_proxy import TcpProxy


def _dropped() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


class LosesAnswers(_CachedStorage):
    """A real storage whose named calls commit and then fail, as when the connection drops before the answer."""

    def __init__(self, backend: RDBStorage, lose: list[str]) -> None:
        super().__init__(backend)
        self.lose = lose

    def create_new_trial(self, study_id, template_trial=None):
        trial_id = super().create_new_trial(study_id, template_trial)
        if "create twice" in self.lose:  # what RDBStorage's own retry does after a lost commit
            self.lose.remove("create twice")
            trial_id = super().create_new_trial(study_id, template_trial)
        if "create" in self.lose:
            self.lose.remove("create")
            raise _dropped()
        return trial_id

    def set_trial_state_values(self, trial_id, state, values=None):
        done = super().set_trial_state_values(trial_id, state=state, values=values)
        if "state" in self.lose:
            self.lose.remove("state")
            raise _dropped()
        return done


def _study(tmp_path: Path, lose: list[str]) -> optuna.Study:
    inner = LosesAnswers(RDBStorage(f"sqlite:///{tmp_path / 's.db'}"), lose)
    storage = ResilientStorage(inner, "sqlite:///s.db", limit=30)
    return optuna.create_study(storage=storage, directions=DIRECTIONS, study_name="s")


def test_lost_answers_do_not_count_a_trial_twice(tmp_path):
    study = _study(tmp_path, ["create", "state"])
    trial = study.ask()  # created, answer lost, retried: found by its token, not created again
    assert len(study.get_trials()) == 1
    frozen = study.tell(trial, [1.0, 2.0])  # COMPLETE committed, answer lost, retried: a success
    assert frozen.state == TrialState.COMPLETE
    trials = study.get_trials()
    assert [(t.number, t.state, t.values) for t in trials] == [(0, TrialState.COMPLETE, [1.0, 2.0])]


def test_a_copy_created_by_a_retried_commit_is_failed(tmp_path):
    study = _study(tmp_path, ["create twice"])
    trial = study.ask()
    count = Counter(t.state for t in study.get_trials())
    assert count == {TrialState.RUNNING: 1, TrialState.FAIL: 1}
    assert study.get_trials(states=(TrialState.RUNNING,))[0].number == trial.number
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    assert "duplicate" in failed.user_attrs["fail_reason"]


def test_past_the_limit_one_line_with_the_password_masked(tmp_path):
    class Away(_CachedStorage):
        def get_all_trials(self, *args, **kwargs):
            raise optuna.exceptions.StorageInternalError("commit failed") from _dropped()

    url = "postgresql://user:s3cret@db.example:5432/hg"
    storage = ResilientStorage(Away(RDBStorage(f"sqlite:///{tmp_path / 's.db'}")), safe_url(url), limit=1)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        storage.get_all_trials(0)
    assert 1 <= time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "s3cret" not in msg
    assert msg.startswith("storage postgresql://user:***@db.example:5432/hg unreachable for over 1 s")
    t0 = time.monotonic()
    with pytest.raises(StorageError):  # on the way out (closing the trial) it does not wait again
        storage.get_all_trials(0)
    assert time.monotonic() - t0 < 0.5


def _out_of_step(command: str) -> sa_exc.InternalError:
    """What psycopg raised in CI when pgbouncer's server shut down mid-transaction (not flagged a disconnect)."""
    import psycopg

    return sa_exc.InternalError(command, {}, psycopg.InternalError(f"received 2 results from command {command!r}"))


@pytest.mark.parametrize("worker", [False, True])
def test_a_connection_out_of_step_while_opening_is_waited_out(monkeypatch, worker):
    # CI, 30 workers through pgbouncer and a server restart: a worker's first connection got two answers to
    # the savepoint psycopg takes to look up hstore, and the worker died with "cannot open storage".
    monkeypatch.setenv(REACHED_ENV, "1" if worker else "0")
    calls = []

    def opening() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _out_of_step('RELEASE "_pg3_1"')
        return "opened"

    assert wait_out(opening, "postgresql://h/db", limit=10) == "opened"
    assert len(calls) == 3


def test_a_commit_out_of_step_is_retried(tmp_path):
    class Desynced(_CachedStorage):
        failed = False

        def get_all_trials(self, *args, **kwargs):
            if not self.failed:
                self.failed = True
                raise _out_of_step("COMMIT")
            return super().get_all_trials(*args, **kwargs)

    inner = Desynced(RDBStorage(f"sqlite:///{tmp_path / 's.db'}"))
    storage = ResilientStorage(inner, "sqlite:///s.db", limit=10)
    study = optuna.create_study(storage=storage, directions=DIRECTIONS, study_name="s")
    assert storage.get_all_trials(study._study_id) == [] and inner.failed


def test_a_wrong_request_is_not_retried(tmp_path):
    study = _study(tmp_path, [])
    t0 = time.monotonic()
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(storage=study._storage, study_name="s")
    assert time.monotonic() - t0 < 1


# A full disk.


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 2 MB tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_full_disk_one_line_and_nothing_half_written(small_disk):
    csv, pt = small_disk / "trials.csv", small_disk / "model.pt"
    csv.write_text("old\n")
    big = pd.DataFrame({"x": range(400_000)})  # about 3 MB as CSV
    with pytest.raises(StorageError) as e:
        atomic_write(csv, lambda p: big.to_csv(p))
    assert str(e.value).startswith(f"disk full: cannot write {csv} (it needs more than ")
    assert "\n" not in str(e.value)
    assert csv.read_text() == "old\n"  # the old file, whole
    with pytest.raises(StorageError, match="disk full: cannot write .*model.pt"):
        with atomic_open(pt) as f:  # torch reports a full disk as a RuntimeError without errno
            torch.save(torch.zeros(1_000_000), f)
    assert sorted(p.name for p in small_disk.iterdir()) == ["trials.csv"]  # no temporary file left


@pytest.mark.slow
def test_search_stops_on_a_full_disk_and_resumes(small_disk, tiny_idx, tmp_path):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_700_000)  # a 100K model's checkpoint (weights + Adam state) is ~1.2 MB
    args = ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", "2",
            "--epochs", "1", "--family", "hourglass", "--study", "full", "--results-dir", str(small_disk),
            "--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    res = hgsearch(*args, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full: cannot write "), res.stderr
    assert "checkpoints/hourglass-0.pt" in lines[0] and "needs more than" in lines[0]
    left = [p.name for p in small_disk.rglob("*") if p.is_file()]
    assert left == ["filler"], left  # no half-written checkpoint or temporary file
    filler.unlink()
    res = hgsearch(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    trials = optuna.load_study(study_name="full.hourglass", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    count = Counter(t.state.name for t in trials)
    assert count["COMPLETE"] == 2 and count["RUNNING"] == count["WAITING"] == 0, count


# A database that goes away, through the real PostgreSQL server .ci/postgres.sh started.


@pytest.fixture
def server(postgres_url):  # noqa: F811
    data = os.environ.get("PGDATA")
    if not data or not Path(data, "postmaster.opts").is_file():
        if os.environ.get("HGSEARCH_CI") == "1":
            pytest.fail("PGDATA is not set to the server's data directory, but this is CI: .ci/run must export it")
        pytest.skip("set PGDATA to the test server's data directory (.ci/postgres.sh prints it) to stop and start it")
    return PgServer(Path(data))


class PgServer:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
        # The options it was started with (port, socket directory), to start it the same way again.
        words = shlex.split((data / "postmaster.opts").read_text())[1:]
        self.opts = shlex.join(w for i, w in enumerate(words) if w != "-D" and (i == 0 or words[i - 1] != "-D"))

    def _ctl(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), *args], check=True,
                       capture_output=True, timeout=120)

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._ctl("-w", "-t", "60", "-l", str(self.data / "server.log"), "-o", self.opts, "start")


def _pg_args(tiny_idx: Path, url: str, study: str, trials: int, epochs: int) -> list[str]:
    return ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", str(trials),
            "--epochs", str(epochs), "--storage", url, "--study", study, "--workers", "2"]


def _some_complete(url: str, study: str, proc: subprocess.Popen, err: Path) -> bool:
    assert proc.poll() is None, err.read_text()
    try:
        return any(t.state.name == "COMPLETE" for ts in states(url, study).values() for t in ts)
    except KeyError:  # studies not created yet
        return False


OUTAGE_S = 6  # longer than a `pg_ctl restart`, so that storage calls surely fail and are retried


@pytest.mark.slow
def test_database_restart_under_two_workers(server, postgres_url, study, tiny_idx, tmp_path):  # noqa: F811
    err = tmp_path / "err.txt"
    proc = popen(_pg_args(tiny_idx, postgres_url, study, 3, 2), tmp_path, err)
    try:
        wait_for(lambda: _some_complete(postgres_url, study, proc, err), 240, "a completed trial")
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.read_text()
    assert "unreachable" in out and "is back after" in out, out
    assert "died" not in out and "crashed" not in out, out
    assert_exactly(states(postgres_url, study), 3)


@pytest.mark.slow
def test_outage_past_the_limit_ends_in_one_line_and_resumes(server, postgres_url, study, tiny_idx,  # noqa: F811
                                                           tmp_path):
    config = tmp_path / "short.toml"
    config.write_text("[run]\nstorage_retry_seconds = 5\n")
    args = [*_pg_args(tiny_idx, postgres_url, study, 3, 2), "--config", str(config)]
    err = tmp_path / "err.txt"
    proc = popen(args, tmp_path, err)
    try:
        wait_for(lambda: _some_complete(postgres_url, study, proc, err), 240, "a completed trial")
        server.stop()
        t0 = time.monotonic()
        proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        server.start()
    assert proc.returncode == 1
    lines = err.read_text().strip().splitlines()
    masked = make_url(postgres_url).render_as_string(hide_password=True)
    assert len(lines) == 1 and lines[0].startswith(f"error: storage {masked} unreachable for over 5 s"), lines
    assert took < 60, took
    res = hgsearch(*args, cwd=tmp_path)  # the same command, the database back
    assert res.returncode == 0, res.stderr
    assert_exactly(states(postgres_url, study), 3)


@pytest.mark.slow
def test_flaky_network_leaves_nothing_half_claimed_or_duplicated(postgres_url, study, tiny_idx,  # noqa: F811
                                                                 tmp_path):
    target = make_url(postgres_url)
    with TcpProxy(target.host, target.port) as proxy:
        flaky = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        # By traffic, not by the clock (every 1.5 s gave CI's faster machine 4 cuts): a clean run sends
        # about 330 KB, so about 11 cuts, each one right after a statement went out.
        proxy.cut_every_bytes(30_000)
        res = hgsearch(*_pg_args(tiny_idx, flaky, study, 3, 1), cwd=tmp_path)
        cuts = proxy.cuts
    assert res.returncode == 0, res.stderr
    assert cuts >= 8, cuts
    trials = states(postgres_url, study)
    assert_exactly(trials, 3)
    for fam in FAMILIES:
        tokens = Counter(t.system_attrs.get(CLAIM_KEY) for t in trials[fam] if t.state.name != "FAIL")
        assert all(n == 1 for n in tokens.values()), tokens
        for t in trials[fam]:
            if t.state.name == "COMPLETE":  # fully claimed: its configuration and worker were stored
                assert {"width", "depth", "params", "worker"} <= set(t.user_attrs), t.user_attrs
            else:
                assert t.user_attrs.get("fail_reason"), t
