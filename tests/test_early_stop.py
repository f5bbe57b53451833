"""Early stopping in the real search: curves stored, dominated trials PRUNED and final, exact counts across
kill -9, --workers and --timeout, and the stopped trials in trials.csv, curves.csv, show and the plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import hgsearch, make_idx_dataset
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import load_task
from hgsearch.errors import StudyMismatchError
from hgsearch.search import curves
from hgsearch.search import run as search
from hgsearch.search.identity import open_studies
from hgsearch.search.pruning import Observation, Pruner
from hgsearch.store import schema
from hgsearch.store.schema import SETTINGS_KEY
from tests.conftest import finish_run, run_checkpoints, run_trials, start_run, state_counts, wait_marker

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")

# Small rungs for tiny searches: any no-larger peer ahead at a rung counts (margin 0, one peer).
EAGER = "[run]\nprune_min_peers = 1\nprune_margin = 0.0\n"


def _cfg(tiny_idx: Path, tmp_path: Path, **kw) -> RunConfig:
    base = dict(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=6, epochs=3,
                results_dir=str(tmp_path / "results"), study="s", device="cpu", seed=2, prune_min_peers=1,
                prune_margin=0.0)
    return RunConfig(**{**base, **kw})


def finished(ts: list) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)


def test_a_pruned_search_stops_dominated_trials_and_counts_them(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path)
    ts = search.run_search(cfg)["hourglass"].get_trials()
    assert finished(ts) == len(ts) == 6  # --trials counts COMPLETE + PRUNED, exactly
    pruned = [t for t in ts if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) < 6  # this seed's configurations include dominated ones
    for t in ts:
        c = t.user_attrs[schema.CURVE_KEY]
        assert len(c) == len(t.user_attrs[schema.CURVE_SECONDS_KEY]) == (1 if t in pruned else 3)
    pruner = Pruner(cfg.pruning, 1, 3, 3, 0.0, 1)
    for t in pruned:
        a = t.user_attrs
        assert a["stopped_at_epoch"] == 1 and "psnr_val" not in a and t.values is None
        assert a["fail_reason"].startswith("stopped after epoch 1:")
        # The stored decision is the pruner's on what the storage held before the trial's own turn.
        before = [o for u in ts if u.number < t.number and (o := curves.observation("hourglass", u))]
        me = curves.observation("hourglass", t)
        assert pruner.decide(me, 1, before).reason == a["fail_reason"]
    # Every trial that completed was on the non-dominated set or within the keep at its rung:
    # a trial no peer dominated at epoch 1 was never stopped.
    for t in pruned:
        at1 = {u.number: (u.user_attrs["params"], u.user_attrs["curve"][0]) for u in ts if u.number < t.number}
        me = (t.user_attrs["params"], t.user_attrs["curve"][0])
        assert any(p <= me[0] and v > me[1] for p, v in at1.values())
    assert not list((cfg.study_dir / "checkpoints").glob("*.pt"))

    # frontier: trials.csv holds the stopped trials (PRUNED, with the reason), curves.csv every epoch,
    # --plot draws the learning curves; the frontier itself has only completed trials.
    res = hgsearch("frontier", "--study", "s", "--results-dir", str(tmp_path / "results"), "--data-dir",
                   str(tiny_idx), "--plot")
    assert res.returncode == 0, res.stderr
    out = cfg.study_dir
    trials = pd.read_csv(out / "trials.csv")
    front = pd.read_csv(out / "frontier.csv")
    stopped = trials[trials["state"] == "PRUNED"]
    assert sorted(stopped["trial"]) == sorted(t.number for t in pruned)
    assert not stopped["on_frontier"].any() and not set(front["trial"]) & set(stopped["trial"])
    assert stopped["fail_reason"].str.startswith("stopped after epoch 1").all()
    lines = pd.read_csv(out / "curves.csv")
    assert len(lines) == 3 * (6 - len(pruned)) + len(pruned)
    assert set(lines.loc[lines["state"] == "PRUNED", "trial"]) == {t.number for t in pruned}
    assert (out / "curves.png").is_file() and (out / "curves.svg").is_file()
    shown = json.loads(hgsearch("show", "--study", "s", "--results-dir", str(tmp_path / "results"),
                                "--json").stdout)
    [hg] = shown["families"]
    assert (hg["complete"], hg["pruned"]) == (6 - len(pruned), len(pruned))


def test_pruning_settings_define_the_study_and_old_studies_resume_as_none(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path, pruning="none")
    data = load_task(cfg)
    study = open_studies(cfg, ["hourglass"], data)["hourglass"]
    stored = dict(study.user_attrs[SETTINGS_KEY])
    assert stored["pruning"] == {"rule": "none"}
    del stored["pruning"]  # a study from before pruning existed
    study.set_user_attr(SETTINGS_KEY, stored)
    open_studies(cfg, ["hourglass"], data)  # resumes: a missing key means "none"
    with pytest.raises(StudyMismatchError, match=r"pruning \(study: \{'rule': 'none'\}, now: \{'rule': 'pareto-asha'"):
        open_studies(_cfg(tiny_idx, tmp_path), ["hourglass"], data)
    pruned = _cfg(tiny_idx, tmp_path, study="p")
    open_studies(pruned, ["hourglass"], data)
    with pytest.raises(StudyMismatchError, match="pruning"):
        open_studies(_cfg(tiny_idx, tmp_path, study="p", prune_margin=0.25), ["hourglass"], data)


def test_pruner_option_is_checked(tiny_idx, tmp_path):
    res = hgsearch("run", "--budget", "100K", "--pruner", "median", cwd=tmp_path)
    assert res.returncode == 2 and "median" in res.stderr
    res = hgsearch("run", "--budget", "100K", "--timeout", "soon", cwd=tmp_path)
    assert res.returncode == 2 and "invalid duration 'soon'" in res.stderr


@pytest.mark.slow
def test_kill_right_after_a_rung_decision_then_resume_decides_again(tiny_idx, tmp_path):
    (tmp_path / "eager.toml").write_text(EAGER)
    extra = ("--trials", "4", "--family", "hourglass", "--seed", "2", "--config", str(tmp_path / "eager.toml"))
    # The 4th trial's epoch-1 decision (the rung, 3 peers) is taken; its checkpoint is not written yet.
    proc = start_run(tmp_path, tiny_idx, *extra, pause="decided:4")
    wait_marker(proc, "HGSEARCH_PAUSED decided")
    before = run_trials(tmp_path)["hourglass"]
    proc.kill()
    proc.wait()
    [killed] = [t for t in before if t.state == TrialState.RUNNING]
    assert len(killed.user_attrs[schema.CURVE_KEY]) == 1 and run_checkpoints(tmp_path) == []

    finish_run(tmp_path, tiny_idx, *extra)
    after = run_trials(tmp_path)["hourglass"]
    assert finished(after) == 4 and not {"RUNNING", "WAITING"} & set(state_counts(after))
    dead = next(t for t in after if t.number == killed.number)
    assert dead.state == TrialState.FAIL and "is gone" in dead.user_attrs["fail_reason"]
    [retry] = [t for t in after if t.user_attrs.get("retry_of") == [killed.number]]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    # Retrained from epoch 0 (no checkpoint): the same epoch-1 PSNR, and the decision taken again.
    assert retry.user_attrs[schema.CURVE_KEY][0] == pytest.approx(killed.user_attrs[schema.CURVE_KEY][0], abs=1e-4)
    peers = [o for t in after if t.number < killed.number and (o := curves.observation("hourglass", t))]
    me = Observation("hourglass", retry.number, retry.user_attrs["params"], tuple(retry.user_attrs["curve"]))
    assert Pruner("pareto-asha", 1, 3, 2, 0.0, 1).decide(me, 1, peers).stop == (retry.state == TrialState.PRUNED)
    assert run_checkpoints(tmp_path) == []


@pytest.mark.slow
def test_timeout_stops_cleanly_and_the_trial_continues_on_resume(tiny_idx, tmp_path):
    extra = ("--trials", "2", "--family", "hourglass")
    env = {k: v for k, v in os.environ.items()}
    # Paused mid-epoch 2 of the first trial (epoch 1's checkpoint on disk) until the timeout stops it.
    res = hgsearch("run", "--budget", "100K", "--dataset", "idx", "--epochs", "2", "--data-dir", str(tiny_idx),
                   *extra, "--timeout", "10s", cwd=tmp_path, env={**env, "HGSEARCH_TEST_PAUSE_AT": "epoch:1"})
    assert res.returncode == 0, res.stderr
    assert "stopped at the --timeout of 10s" in res.stdout and "Resume with: hgsearch run" in res.stdout
    ts = run_trials(tmp_path)["hourglass"]
    assert state_counts(ts) == {"FAIL": 1, "WAITING": 1} and "interrupted" in ts[0].user_attrs["fail_reason"]
    assert run_checkpoints(tmp_path) == ["hourglass-0.pt"]
    finish_run(tmp_path, tiny_idx, *extra)
    ts = run_trials(tmp_path)["hourglass"]
    assert finished(ts) == 2 and ts[1].user_attrs["retry_of"] == [0]
    assert len(ts[1].user_attrs[schema.CURVE_KEY]) == 2  # epoch 1's entry kept from the cut-off attempt


@pytest.mark.slow
def test_two_workers_share_the_rungs_with_exact_counts(tmp_path):
    (tmp_path / "eager.toml").write_text(EAGER)
    # More images than tiny_idx: trials long enough that the second worker is up before the first ends them all.
    data = make_idx_dataset(tmp_path / "idx", n_train=8000)
    res = hgsearch("run", "--budget", "100K", "--dataset", "idx", "--epochs", "2", "--data-dir",
                   str(data), "--trials", "6", "--family", "hourglass", "--seed", "2", "--workers", "2",
                   "--config", str(tmp_path / "eager.toml"), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    ts = run_trials(tmp_path)["hourglass"]
    assert finished(ts) == 6 and set(state_counts(ts)) <= {"COMPLETE", "PRUNED"}
    workers = {t.user_attrs["worker"]["pid"] for t in ts}
    assert len(workers) == 2  # both took trials
    for t in ts:
        n = 1 if t.state == TrialState.PRUNED else 2
        assert len(t.user_attrs[schema.CURVE_KEY]) == n
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["stopped_at_epoch"] == 1 and "stopped after epoch 1" in t.user_attrs["fail_reason"]
    if any(t.state == TrialState.PRUNED for t in ts):
        assert "stopped hourglass #" in res.stdout
