"""frontier.csv / trials.csv: columns named for what they hold, retries told apart, flags from the baseline."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from hgsearch.model.families import ArchSpec
from hgsearch.results.trials import FRONTIER_CSV_COLUMNS, TRIAL_COLUMNS, load_frontier, write_tables
from hgsearch.store.schema import DIRECTIONS, RETRY_ATTR, SETTINGS_KEY, family_study_name
from hgsearch.training.baselines import Baseline
from hgsearch.training.record import TrialRecord


def _study(url: str) -> None:
    study = optuna.create_study(study_name=family_study_name("s", "hourglass"), storage=url, directions=DIRECTIONS)
    study.set_user_attr(SETTINGS_KEY, {"budget": 10**6})
    for i, (width, val, extra) in enumerate([(100, 20.0, {}), (200, 22.0, {}), (300, 21.0, {RETRY_ATTR: [0]})]):
        rec = TrialRecord.of(ArchSpec("hourglass", 36, 144, width, 10, 2), lr=1e-3, seed=0, epochs=2)
        results = {"psnr_val": val, "psnr_test": val - 0.5, "train_loss": 0.01 * (i + 1), "seconds": 1.0}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=[float(rec.params), val],
            user_attrs={**rec.to_attrs(), **results, **extra}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "x"}))


def test_tables_columns_keys_and_flags(tmp_path):
    url = f"sqlite:///{tmp_path / 'db'}"
    _study(url)
    fr = load_frontier("s", url)
    write_tables(fr, tmp_path, Baseline("superres", "bicubic upsampling", 20.5, 20.4))
    front = pd.read_csv(tmp_path / "frontier.csv")
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert list(front.columns) == FRONTIER_CSV_COLUMNS and list(trials.columns) == TRIAL_COLUMNS
    assert "psnr" not in trials.columns and list(trials["psnr_test"][:3]) == [19.5, 21.5, 20.5]
    assert list(trials["train_loss"][:3]) == [0.01, 0.02, 0.03]
    # trial 2 retried trial 0 with the same family: family + trial stays unique, retry_of links them
    assert not trials.duplicated(["family", "trial"]).any()
    assert pd.isna(trials.loc[0, "retry_of"]) and trials.loc[2, "retry_of"] == 0
    assert list(trials["on_frontier"]) == [True, True, False, False]  # trial 2 is dominated by trial 1
    assert list(front["trial"]) == [0, 1] and list(front["learned_nothing"]) == [True, False]

    write_tables(fr, tmp_path)  # no baseline (no data): the flag is unknown, not False
    assert pd.read_csv(tmp_path / "frontier.csv")["learned_nothing"].isna().all()
