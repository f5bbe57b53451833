"""A trial run's seams: the per-epoch decision point and the executor, on a real tiny training, through the
run loop's own path (claims.claim_runs, then trial.run_trials)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import load_task
from hgsearch.events import TrialEnd, quiet
from hgsearch.search.claims import claim_runs
from hgsearch.search.context import FamilySearch
from hgsearch.search.executors import SerialExecutor
from hgsearch.search.identity import open_studies
from hgsearch.search.trial import EpochHook, Executor, TrialRun, keep_going, run_trials
from hgsearch.training.record import CONFIG_ATTRS, TrialRecord

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _setup(tiny_idx: Path, tmp_path: Path, epochs: int):
    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=2,
                    epochs=epochs, results_dir=str(tmp_path / "results"), study="s", device="cpu")
    data = load_task(cfg)
    return cfg, data, open_studies(cfg, ["hourglass"], data)["hourglass"]


def _run_one(cfg, data, study, reporter=quiet, executor: Executor | None = None, on_epoch: EpochHook = keep_going):
    """One trial as run_search runs it: claimed, then run by the executor with the hook."""
    search = FamilySearch(study, cfg, "hourglass", data, reporter)
    [frozen] = run_trials(search, claim_runs(search, 1, on_epoch), executor or SerialExecutor())
    return frozen


def test_the_hook_sees_every_epoch_once_and_the_trial_completes(tiny_idx, tmp_path):
    cfg, data, study = _setup(tiny_idx, tmp_path, epochs=3)
    calls = []

    def hook(claimed: TrialRun, epoch: int, metrics: dict[str, float]) -> bool:
        # The decision comes first: on disk is the previous epoch's checkpoint (none before epoch 2).
        on_disk = (torch.load(claimed.checkpoint, weights_only=False)["state"]["epoch"]
                   if claimed.checkpoint.is_file() else 0)
        assert on_disk == epoch - 1
        calls.append((claimed.trial.number, epoch, sorted(metrics)))
        return True

    frozen = _run_one(cfg, data, study, on_epoch=hook)
    assert frozen.state == TrialState.COMPLETE
    assert calls == [(0, 1, ["seconds", "train_loss"]), (0, 2, ["seconds", "train_loss"]),
                     (0, 3, ["seconds", "train_loss"])]
    assert TrialRecord.from_attrs(frozen.user_attrs).epochs == 3


def test_false_stops_training_and_the_trial_is_pruned_with_its_record(tiny_idx, tmp_path):
    cfg, data, study = _setup(tiny_idx, tmp_path, epochs=4)
    epochs_seen, ends = [], []

    def stop_after_two(claimed: TrialRun, epoch: int, metrics: dict[str, float]) -> bool:
        epochs_seen.append(epoch)
        return epoch < 2

    frozen = _run_one(cfg, data, study, ends.append, on_epoch=stop_after_two)
    assert epochs_seen == [1, 2]  # no third epoch was trained
    assert frozen.state == TrialState.PRUNED
    a = frozen.user_attrs
    assert set(CONFIG_ATTRS) <= set(a) and a["stopped_at_epoch"] == 2 and a["train_loss"] > 0
    assert "psnr_val" not in a  # never evaluated
    assert not list((cfg.study_dir / "checkpoints").glob("*.pt"))  # it will not be resumed
    assert ends[-1] == TrialEnd("hourglass", frozen, "stopped early after epoch 2 of 4")


def test_an_executor_gets_the_claimed_trial_and_its_outcome_is_told(tiny_idx, tmp_path):
    cfg, data, study = _setup(tiny_idx, tmp_path, epochs=1)
    seen = []

    class Recording(SerialExecutor):
        def run(self, runs):
            seen.extend(runs)
            return super().run(runs)

    frozen = _run_one(cfg, data, study, executor=Recording())
    [c] = seen
    assert (c.search.family, c.trial.number, c.resume, c.retry_of) == ("hourglass", 0, None, [])
    assert c.record == TrialRecord.from_attrs(frozen.user_attrs)
    assert frozen.state == TrialState.COMPLETE and frozen.values[0] == c.record.params
