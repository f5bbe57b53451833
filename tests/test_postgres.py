"""Many hosts, one study through a real PostgreSQL server: a worker SIGKILLed mid-trial, the other finishes;
under pruning, a kill -9 just after a rung decision and two hosts deciding at the same rungs keep exact counts.

Needs HGSEARCH_TEST_POSTGRES=postgresql://user:pw@host:port/db (`.ci/postgres.sh` starts a throw-away
server and prints it). Without it the tests skip locally, but fail in CI (HGSEARCH_CI=1, set by .ci/run):
a CI that silently stopped testing PostgreSQL would look green while testing nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from hgsearch.search import curves
from hgsearch.search.pruning import Observation, Pruner
from hgsearch.store import schema
from tests.conftest import FAMILIES, REPO, assert_exactly, hgsearch, make_idx_dataset, popen, states, wait_for

N = 3
# Small rungs for tiny searches: any no-larger peer ahead at a rung counts (margin 0, one peer).
EAGER = "[run]\nprune_min_peers = 1\nprune_margin = 0.0\n"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # several processes share 2 busy cores: spinning OpenMP threads cost seconds


@pytest.mark.slow
def test_two_hosts_one_killed_mid_trial_the_other_finishes(postgres_url, study, tiny_idx, tmp_path):
    args = ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", str(N),
            "--epochs", "3", "--storage", postgres_url, "--study", study]
    hosts = {h: tmp_path / h for h in ("a", "b", "c")}  # separate results dirs, as on separate machines
    for d in hosts.values():
        d.mkdir()
    a_err, b_err = tmp_path / "a.txt", tmp_path / "b.txt"
    # Worker A pauses mid-epoch of its first trial (search's test hook), holding it RUNNING with a live
    # heartbeat; then B joins and works alongside it; then A is killed -9 there.
    a = popen(args, hosts["a"], a_err, HGSEARCH_TEST_PAUSE_AT="epoch")
    try:
        wait_for(lambda: "HGSEARCH_PAUSED epoch" in a_err.read_text() or a.poll() is not None, 180, "A mid-trial")
        assert a.poll() is None, a_err.read_text()
        b = popen(args, hosts["b"], b_err)
        try:
            def b_completed_one() -> bool:
                assert b.poll() is None, b_err.read_text()
                return any(t.state.name == "COMPLETE" for ts in states(postgres_url, study).values() for t in ts)

            wait_for(b_completed_one, 180, "B to complete a trial while A holds one")
            running = [t for ts in states(postgres_url, study).values() for t in ts if t.state.name == "RUNNING"
                       and t.user_attrs.get("worker", {}).get("pid") == a.pid]
            assert len(running) == 1, running
            killed = running[0]
            a.kill()
            a.wait()
            out, _ = b.communicate(timeout=300)
        finally:
            if b.poll() is None:
                b.kill()
        assert b.returncode == 0, b_err.read_text()
    finally:
        if a.poll() is None:
            a.kill()

    trials = states(postgres_url, study)
    assert_exactly(trials, N)
    fam = killed.user_attrs["family"]
    after = {t.number: t for t in trials[fam]}
    assert after[killed.number].state.name == "FAIL"
    assert "interrupted" in after[killed.number].user_attrs["fail_reason"]
    retry = [t for t in after.values() if killed.number in t.user_attrs.get("retry_of", [])]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == killed.params

    # Any host reads the study through the same URL: frontier (CSV files), show.
    fr = hgsearch("frontier", "--storage", postgres_url, "--study", study, cwd=hosts["c"])
    assert fr.returncode == 0, fr.stderr
    table = pd.read_csv(hosts["c"] / "results" / study / "trials.csv")
    assert (table["state"] == "COMPLETE").groupby(table["family"]).sum().to_dict() == dict.fromkeys(FAMILIES, N)
    shown = hgsearch("show", "--storage", postgres_url, "--study", study, cwd=hosts["c"])
    assert shown.returncode == 0, shown.stderr
    assert study in shown.stdout
    from sqlalchemy.engine import make_url

    password = make_url(postgres_url).password
    if password:
        assert f":{password}@" not in fr.stdout + fr.stderr + shown.stdout + out  # never printed


@pytest.mark.slow
def test_workers_flag_on_postgres(postgres_url, study, tiny_idx, tmp_path):
    res = hgsearch("run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", "2",
                   "--epochs", "2", "--storage", postgres_url, "--study", study, "--workers", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 workers" in res.stdout
    assert_exactly(states(postgres_url, study), 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_kill_right_after_a_rung_decision_on_postgres(postgres_url, study, tiny_idx, tmp_path):
    (tmp_path / "eager.toml").write_text(EAGER)
    args = ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", str(N),
            "--epochs", "3", "--seed", "2", "--config", str(tmp_path / "eager.toml"), "--storage", postgres_url,
            "--study", study]
    err = tmp_path / "a.txt"
    # Families take turns: the 5th trial is hourglass's 3rd, whose epoch-1 decision (rung 1, 2 peers)
    # is taken and stored; its checkpoint is not written yet when the process is killed -9 there.
    a = popen(args, tmp_path, err, HGSEARCH_TEST_PAUSE_AT="decided:5", **ONE_THREAD)
    try:
        wait_for(lambda: "HGSEARCH_PAUSED decided" in err.read_text() or a.poll() is not None, 120, "decided")
        assert a.poll() is None, err.read_text()
        before = states(postgres_url, study)
        a.kill()
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
    [killed] = [t for ts in before.values() for t in ts if t.state.name == "RUNNING"]
    fam = killed.user_attrs["family"]
    assert len(killed.user_attrs[schema.CURVE_KEY]) == 1  # killed in the trial whose rung it just decided
    assert not list((tmp_path / "results").rglob("checkpoints/*.pt"))

    res = hgsearch(*args, cwd=tmp_path, env=ONE_THREAD)  # the same command resumes
    assert res.returncode == 0, res.stderr
    after = states(postgres_url, study)
    assert_exactly(after, N, final=("COMPLETE", "PRUNED"))
    dead = next(t for t in after[fam] if t.number == killed.number)
    assert dead.state.name == "FAIL" and "is gone" in dead.user_attrs["fail_reason"]
    [retry] = [t for t in after[fam] if t.user_attrs.get("retry_of") == [killed.number]]
    assert retry.state.name in ("COMPLETE", "PRUNED") and retry.params == killed.params
    # Retrained from epoch 0 (no checkpoint): the same epoch-1 PSNR, and the rung decided again, alike.
    assert retry.user_attrs[schema.CURVE_KEY][0] == pytest.approx(killed.user_attrs[schema.CURVE_KEY][0], abs=1e-4)
    peers = [o for t in after[fam] if t.number < killed.number and (o := curves.observation(fam, t))]
    me = Observation(fam, retry.number, retry.user_attrs["params"], tuple(retry.user_attrs[schema.CURVE_KEY]))
    assert Pruner("pareto-asha", 1, 3, 3, 0.0, 1).decide(me, 1, peers).stop == (retry.state.name == "PRUNED")
    assert not list((tmp_path / "results").rglob("checkpoints/*.pt"))


REASON = re.compile(r"stopped after epoch 1: ([\d.]+) dB, .*; trial (\d+) with ([\d,]+) parameters had ([\d.]+) dB")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_two_hosts_share_the_rungs_on_postgres(postgres_url, study, tmp_path):
    (tmp_path / "eager.toml").write_text(EAGER)
    # More images than tiny_idx: trials long enough that the second host is up before the first ends them all.
    data = make_idx_dataset(tmp_path / "idx", n_train=8000)
    n = 6
    args = ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(data), "--trials", str(n),
            "--epochs", "2", "--family", "hourglass", "--seed", "2", "--config", str(tmp_path / "eager.toml"),
            "--storage", postgres_url, "--study", study]
    hosts: dict[str, Path] = {h: tmp_path / h for h in ("a", "b")}  # separate results dirs, as on two machines
    procs = {}
    try:
        for h, d in hosts.items():
            d.mkdir()
            procs[h] = popen(args, d, tmp_path / f"{h}.txt", **ONE_THREAD)
        for h, p in procs.items():
            p.communicate(timeout=240)
            assert p.returncode == 0, (tmp_path / f"{h}.txt").read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    import optuna

    ts = optuna.load_study(study_name=f"{study}.hourglass", storage=postgres_url).get_trials()
    assert_exactly({"hourglass": ts}, n, final=("COMPLETE", "PRUNED"))
    # No kill, so nothing failed, except a claim lost to the other host at the same moment (claims.claim).
    failed = [t for t in ts if t.state.name == "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("surplus") and not t.params for t in failed), failed
    finished = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    assert {t.user_attrs["worker"]["pid"] for t in finished} == {p.pid for p in procs.values()}  # both took trials
    by_number = {t.number: t for t in ts}
    pruned = [t for t in ts if t.state.name == "PRUNED"]
    assert pruned  # this seed's configurations include dominated ones
    for t in pruned:
        curve = t.user_attrs[schema.CURVE_KEY]
        assert len(curve) == t.user_attrs["stopped_at_epoch"] == 1 and t.values is None
        m = REASON.fullmatch(t.user_attrs["fail_reason"])
        assert m, t.user_attrs["fail_reason"]
        mine, peer_number, peer_params, peer_psnr = float(m[1]), int(m[2]), int(m[3].replace(",", "")), float(m[4])
        assert mine == pytest.approx(curve[0], abs=0.006)
        # The named peer is another trial of the study, no larger, and ahead at epoch 1, as recorded.
        peer = by_number[peer_number]
        assert peer_number != t.number and peer_params == peer.user_attrs["params"] <= t.user_attrs["params"]
        assert peer_psnr == pytest.approx(peer.user_attrs[schema.CURVE_KEY][0], abs=0.006)
        assert peer.user_attrs[schema.CURVE_KEY][0] >= curve[0]
        assert peer.user_attrs[schema.CURVE_KEY][0] > curve[0] or peer_params < t.user_attrs["params"]


# Past the connection limit: a second throw-away server (.ci/postgres.sh) restarted with few slots.
LIMIT = 8  # max_connections; 3 of them are reserved for superusers, so 5 for the workers


@pytest.fixture(scope="module")
def limited_url(postgres_url) -> Iterator[str]:
    import os
    import shlex
    import subprocess

    env = dict(line.split("=", 1) for line in subprocess.run(
        [str(REPO / ".ci" / "postgres.sh")], capture_output=True, text=True, check=True, timeout=300).stdout.split())
    url, data = env["HGSEARCH_TEST_POSTGRES"], Path(env["PGDATA"])
    try:
        words = shlex.split((data / "postmaster.opts").read_text())[3:]  # after the binary and -D <dir>
        opts = shlex.join([*words, "-c", f"max_connections={LIMIT}"])
        pg_ctl = [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                  str(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
                      / "pg_ctl"), "-D", str(data)]
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-w", "-l", str(data / "server.log"), "-o", opts, "start"], check=True,
                       capture_output=True, timeout=120)
        yield url
    finally:
        subprocess.run([str(REPO / ".ci" / "postgres.sh"), "stop", str(data)], capture_output=True, timeout=120)


@pytest.mark.slow
def test_a_worker_past_the_connection_limit_waits_and_names_the_limit(limited_url, tiny_idx, tmp_path):
    """Every slot taken when a worker starts: it waits (one line naming the limit and the way past it),
    gets in once slots free up, and finishes the study (before: exit 1 at once, 'check the URL')."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(limited_url, poolclass=NullPool)
    held = []
    try:
        while True:
            held.append(engine.connect())
    except sqlalchemy.exc.OperationalError as e:
        assert "slots are reserved" in str(e) or "too many clients" in str(e)
    import os
    import subprocess
    import sys

    err = tmp_path / "out.txt"  # notes go to stdout when it is not a terminal; errors to stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "hgsearch", "run", "--budget", "100K", "--dataset", "idx", "--data-dir",
         str(tiny_idx), "--trials", "2", "--epochs", "1", "--storage", limited_url, "--study", "limited"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **ONE_THREAD},
        stdout=err.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "connection limit" in err.read_text() or proc.poll() is not None, 120, "the limit's note")
        assert proc.poll() is None, err.read_text()
        for con in held:
            con.close()
        proc.wait(timeout=240)
    finally:
        for con in held:
            con.close()
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert proc.returncode == 0, text
    [line] = [x for x in text.splitlines() if "connection limit" in x]
    assert "waiting for a free connection" in line and "max_connections" in line and "pgbouncer" in line
    assert "check the URL" not in text and "during the commit" not in text
    assert_exactly(states(limited_url, "limited"), 2)
