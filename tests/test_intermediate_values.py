"""Learning curves as Optuna intermediate values: why only COMPLETE trials carry them, and that TPE keeps working."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.search import run as search
from hgsearch.search.sampler import STARTUP_TRIALS
from hgsearch.store import optuna_seam as seam
from hgsearch.store import schema

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _two_objective_tpe() -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2, multivariate=True, constant_liar=True)
    return optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)


def _fill(study: optuna.Study, pruned_curves: bool) -> None:
    """Two COMPLETE trials with curves, two PRUNED ones with (or without) theirs, as a search leaves them."""
    for i in range(4):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        if i % 2 == 0:
            seam.set_intermediate_values(trial, [x, 2 * x])
            study.tell(trial, [x, 2 * x])
        else:
            if pruned_curves:
                seam.set_intermediate_values(trial, [x])
            study.tell(trial, state=TrialState.PRUNED)


def test_tpe_cannot_rank_pruned_trials_with_intermediate_values_in_two_objective_studies():
    """The reason curves.py gives, on the installed Optuna: if this starts passing, revisit epoch_hook."""
    study = _two_objective_tpe()
    with pytest.raises(RuntimeError, match="multi-objective"):
        _fill(study, pruned_curves=True)
        study.ask().suggest_float("x", 0.0, 1.0)


def test_tpe_samples_when_only_complete_trials_carry_intermediate_values():
    study = _two_objective_tpe()
    _fill(study, pruned_curves=False)
    for _ in range(3):  # past the start-up trials: TPE splits COMPLETE and PRUNED trials each time
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, state=TrialState.PRUNED)
    first, second = study.trials[:2]
    assert first.intermediate_values == {1: first.params["x"], 2: 2 * first.params["x"]}
    assert second.state == TrialState.PRUNED and second.intermediate_values == {}


def test_a_pruned_search_past_tpe_start_up_writes_curves_of_complete_trials_only(tiny_idx: Path, tmp_path: Path):
    """A real two-objective search with PRUNED trials, beyond TPE's random start-up (it fails if a PRUNED trial
    carries intermediate values): each COMPLETE trial's intermediate values are its stored curve, step = epoch."""
    trials = STARTUP_TRIALS + 2
    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=trials,
                    epochs=3, results_dir=str(tmp_path / "results"), study="s", device="cpu", seed=2,
                    prune_min_peers=1, prune_margin=0.0)
    ts = search.run_search(cfg)["hourglass"].get_trials()
    states = [t.state for t in ts]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == len(ts) == trials
    pruned = [t for t in ts if t.state == TrialState.PRUNED]
    assert pruned and any(t.number >= STARTUP_TRIALS for t in ts)  # TPE sampled with PRUNED trials present
    for t in ts:
        curve = t.user_attrs[schema.CURVE_KEY]
        if t.state == TrialState.COMPLETE:
            assert t.intermediate_values == {i + 1: v for i, v in enumerate(curve)} and len(curve) == 3
        else:
            assert t.intermediate_values == {}
