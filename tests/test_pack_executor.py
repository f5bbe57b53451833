"""The pack executor: per-member checkpoints, failures, stops, early stopping, results equal to the serial path."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import load_task, prepare
from hgsearch.events import TrialStart, quiet
from hgsearch.model.families import ArchSpec
from hgsearch.search import claims, trial
from hgsearch.search import run as search
from hgsearch.search.context import FamilySearch
from hgsearch.search.executors import PackExecutor, SerialExecutor, executor_for
from hgsearch.search.identity import open_studies
from hgsearch.search.trial import TrialRun
from hgsearch.training.loop import epoch_eval_split, evaluate, train
from hgsearch.training.packed import train_packed
from hgsearch.training.record import TrialRecord

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.fixture(scope="module")
def superres(tiny_idx):
    # 120 training images: one full batch of 64 and a partial one per epoch.
    return prepare(load_dataset("idx", tiny_idx), "superres", val_size=60, train_size=120)


def test_a_members_checkpoint_resumes_in_train_and_in_a_pack(superres):
    """Per-member state sliced out of a pack is loop.train's checkpoint format, and back."""
    d = superres
    specs = [ArchSpec("hourglass", d.d_in, d.d_out, 170, 9, 3),
             ArchSpec("conventional", d.d_in, d.d_out, 144, 160, 2),
             ArchSpec("hourglass", d.d_in, d.d_out, 150, 5, 2, fixed_win=True)]
    lrs = [1e-3, 2e-3, 3e-3]
    states = {}

    def keep_epoch_one(k, state):
        if state["epoch"] == 1:
            states[k] = state
        return True

    _, full = train_packed(specs, d, lrs=lrs, epochs=3, batch_size=64, seed=2, on_epoch_end=keep_epoch_one)
    for k, spec in enumerate(specs):
        _, alone = train(spec, d, lr=lrs[k], epochs=3, batch_size=64, seed=2, resume=states[k])
        assert alone.psnr_val == pytest.approx(full[k].psnr_val, abs=1e-3)
    # loop.train's own epoch-1 state continues in a pack (with members in another order).
    own = {}
    for k in (2, 0):
        train(specs[k], d, lr=lrs[k], epochs=3, batch_size=64, seed=2,
              on_epoch_end=lambda s, k=k: own.setdefault(k, copy.deepcopy(s)) if s["epoch"] == 1 else None)
    _, resumed = train_packed([specs[2], specs[0]], d, lrs=[lrs[2], lrs[0]], epochs=3, batch_size=64, seed=2,
                              resume=[own[2], own[0]])
    assert [r.psnr_val for r in resumed] == pytest.approx([full[2].psnr_val, full[0].psnr_val], abs=1e-3)
    with pytest.raises(Exception, match="same epoch"):
        train_packed(specs[:2], d, lrs=lrs[:2], epochs=3, batch_size=64, seed=2, resume=[own[0], None])


def _cfg(tiny_idx: Path, tmp_path: Path, **kw) -> RunConfig:
    base = dict(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="both", trials=3, epochs=1,
                results_dir=str(tmp_path / "results"), study="s", seed=3, device="cpu")
    return RunConfig(**{**base, **kw})


def _by_number(studies) -> dict[tuple[str, int], object]:
    return {(f, t.number): t for f, s in studies.items() for t in s.get_trials()}


def test_packed_search_equals_the_serial_search(tiny_idx, tmp_path):
    """Same seed, same configurations (the sampler is seeded per trial), same PSNR within 1e-3 dB; exact counts."""
    serial = _by_number(search.run_search(_cfg(tiny_idx, tmp_path / "a", pack_size=1)))
    packed_studies = search.run_search(_cfg(tiny_idx, tmp_path / "b", pack_size=4))
    packed = _by_number(packed_studies)
    for study in packed_studies.values():
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert serial.keys() == packed.keys()
    for key, t in packed.items():
        s = serial[key]
        assert t.params == s.params
        assert TrialRecord.from_attrs(t.user_attrs) == TrialRecord.from_attrs(s.user_attrs)
        assert t.user_attrs["psnr_val"] == pytest.approx(s.user_attrs["psnr_val"], abs=1e-3)
        assert t.values == pytest.approx(s.values, abs=1e-3)
        assert {"psnr_test", "train_loss", "seconds"} <= set(t.user_attrs)
    assert not list((tmp_path / "b" / "results" / "s" / "checkpoints").glob("*.pt"))


def test_a_diverging_member_fails_alone_and_the_target_still_holds(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path, family="hourglass", pack_size=4, space=SpaceConfig(lr=(1e-4, 1e31)))
    data = load_task(cfg)
    study = open_studies(cfg, ["hourglass"], data)["hourglass"]
    for lr in (1e-3, 1e30, 2e-3):  # 1e30: AdamW decay alone overflows float32 at once
        study.enqueue_trial({"size": 0.5, "depth": 2, "width_pos": 0.5, "lr": lr})
    search.run_search(cfg)
    ts = study.get_trials()
    assert [t.state for t in ts[:3]] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "non-finite training loss in epoch 1" in ts[1].user_attrs["fail_reason"]
    # Others were sampled in its place (from this wide lr range some diverge too) until 3 completed.
    assert sum(t.state == TrialState.COMPLETE for t in ts) == 3 and {t.state for t in ts} == {
        TrialState.COMPLETE, TrialState.FAIL}
    assert all("non-finite" in t.user_attrs["fail_reason"] for t in ts if t.state == TrialState.FAIL)
    for t in (ts[0], ts[2]):  # the others trained as if alone
        rec = TrialRecord.from_attrs(t.user_attrs)
        alone = train(rec.spec, data, lr=rec.lr, epochs=1, seed=rec.seed)[1]
        assert t.user_attrs["psnr_val"] == pytest.approx(alone.psnr_val, abs=1e-3)


def test_on_epoch_stops_one_member_which_is_pruned(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path, family="hourglass", epochs=2)
    data = load_task(cfg)
    study = open_studies(cfg, ["hourglass"], data)["hourglass"]
    fs = FamilySearch(study, cfg, "hourglass", data, quiet)
    seen = []

    def stop_second(c: TrialRun, epoch: int, metrics: dict) -> bool:
        # Decided before the epoch's checkpoint is written; the member's PSNR on the subset comes with it.
        assert c.checkpoint.is_file() == (epoch > 1)
        assert set(metrics) == {"train_loss", "seconds", "psnr_val_epoch"}
        seen.append((c.trial.number, epoch))
        psnr[c.trial.number] = metrics["psnr_val_epoch"]
        return c.trial.number != 1

    psnr: dict[int, float] = {}
    frozen = trial.run_trials(fs, claims.claim_runs(fs, 3, stop_second), PackExecutor(4, epoch_eval_size=64))
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1), (2, 1), (2, 2)]
    for t in (frozen[0], frozen[2]):  # the pack's per-epoch PSNR is each member's own, as alone
        rec = TrialRecord.from_attrs(t.user_attrs)
        model, alone = train(rec.spec, data, lr=rec.lr, epochs=2, seed=rec.seed)
        assert psnr[t.number] == pytest.approx(evaluate(model, epoch_eval_split(data.val, 64)), abs=1e-3)
        # Epoch 2 ran in a pack repacked without the pruned member: the result is still the member's own.
        assert t.user_attrs["psnr_val"] == pytest.approx(alone.psnr_val, abs=1e-3)
    assert [t.state for t in frozen] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert frozen[1].user_attrs["stopped_at_epoch"] == 1 and "psnr_val" not in frozen[1].user_attrs
    assert not list((cfg.study_dir / "checkpoints").glob("*.pt"))


def test_executor_choice(tiny_idx, tmp_path):
    cpu = torch.device("cpu")
    for cfg in (_cfg(tiny_idx, tmp_path), _cfg(tiny_idx, tmp_path, pack_size=1)):  # CPU default: serial
        ex, k = executor_for(cfg, cpu)
        assert isinstance(ex, SerialExecutor) and k == 1 and ex.epoch_eval_size == cfg.epoch_eval_size
    ex, k = executor_for(_cfg(tiny_idx, tmp_path, pack_size=3), cpu)
    assert isinstance(ex, PackExecutor) and k == 3 and ex.epoch_eval_size == 2048
    with pytest.raises(Exception, match="--pack-size must be 0"):
        _cfg(tiny_idx, tmp_path, pack_size=-1)


@pytest.mark.slow
def test_sigint_then_sigkill_mid_pack_then_resume(tiny_idx, tmp_path):
    """Ctrl-C closes every member for retry; kill -9 of the resumed pack; the next run continues each
    member from its own epoch-1 checkpoint and ends with exact counts and the uninterrupted results."""
    from tests.conftest import run_checkpoints, run_trials, start_run, state_counts, wait_marker

    args = ("--trials", "3", "--family", "hourglass", "--pack-size", "4", "--seed", "3")
    proc = start_run(tmp_path, tiny_idx, *args, pause="epoch:3")  # the pack of 3 claims, mid-epoch 2
    wait_marker(proc, "HGSEARCH_PAUSED epoch")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert state_counts(run_trials(tmp_path)["hourglass"]) == {"FAIL": 3, "WAITING": 3}
    assert run_checkpoints(tmp_path) == ["hourglass-0.pt", "hourglass-1.pt", "hourglass-2.pt"]

    proc = start_run(tmp_path, tiny_idx, *args, pause="epoch:3")  # the 3 retries, resumed, mid-epoch 2 again
    wait_marker(proc, "HGSEARCH_PAUSED epoch")
    proc.kill()
    proc.wait()
    assert state_counts(run_trials(tmp_path)["hourglass"]) == {"FAIL": 3, "RUNNING": 3}

    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=3, epochs=2,
                    results_dir=str(tmp_path / "results"), seed=3, pack_size=4)
    starts = []
    search.run_search(cfg, reporter=lambda e: starts.append(e) if isinstance(e, TrialStart) else None)
    assert [(s.retry_of, s.resumed_epoch) for s in starts] == [([0, 3], 1), ([1, 4], 1), ([2, 5], 1)]
    ts = run_trials(tmp_path)["hourglass"]
    assert state_counts(ts) == {"FAIL": 6, "COMPLETE": 3} and run_checkpoints(tmp_path) == []
    data = load_task(cfg)
    for t in ts[6:]:
        assert t.params == ts[t.user_attrs["retry_of"][0]].params
        rec = TrialRecord.from_attrs(t.user_attrs)
        alone = train(rec.spec, data, lr=rec.lr, epochs=2, seed=3)[1]
        assert t.user_attrs["psnr_val"] == pytest.approx(alone.psnr_val, abs=1e-3)


@pytest.mark.slow
def test_gpu_search_bench_quick_runs_on_cpu(tmp_path):
    """bench/gpu_search.py --quick: both searches run (serial under a short time cap), the packed one
    ends with exact counts and agrees with serial on the configurations both completed."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_search.py"), "--quick", "--serial-seconds", "60",
                          "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    serial, packed = res["rows"]
    assert (serial["search"], packed["search"]) == ("serial", "packed")
    assert "error" not in packed and "error" not in serial
    assert packed["exact_counts"] and packed["complete"] == 6 and packed["trials_per_hour"] > 0
    assert serial["complete"] >= 1 and res["agreement"]["compared"] >= 1
    assert res["agreement"]["max_abs_dpsnr_val"] < 1e-3
