"""Seed retraining: train frontier configurations under more seeds (stored in <study>.seeds), and
load a frontier point's trained model for its sample pictures (cached under weights/, else retrained)."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import TaskData
from hgsearch.errors import TrialFailed, UsageError
from hgsearch.events import Reporter, RunEnd, RunStart, SeedsStart, quiet
from hgsearch.model.families import build
from hgsearch.results.analysis import load_checked_task, study_config
from hgsearch.results.stats import CONFIG_KEYS, means_frontiers
from hgsearch.results.trials import load_frontier, load_seed_rows, seed_rows
from hgsearch.store.schema import DIRECTIONS, METRIC_NAMES, REASON_ATTR, seeds_study_name
from hgsearch.store.storage import make_storage, safe_url
from hgsearch.training.loop import train
from hgsearch.training.record import TrialRecord, load_weights, result_attrs, save_weights, weights_path


def _key(row: pd.Series | dict[str, Any]) -> tuple:
    return tuple(row[k] for k in CONFIG_KEYS)


def _open_seeds(study: str, storage: str) -> optuna.Study:
    # Trials here are fixed configurations: nothing is sampled, so the cheapest sampler will do.
    s = optuna.create_study(study_name=seeds_study_name(study), storage=make_storage(storage),
                            directions=DIRECTIONS,
                            sampler=optuna.samplers.RandomSampler(seed=0), load_if_exists=True)
    if "of_study" not in s.user_attrs:
        s.set_user_attr("of_study", study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            s.set_metric_names(METRIC_NAMES)
    return s


def missing_runs(rows: pd.DataFrame, seeds_df: pd.DataFrame, k: int) -> list[tuple[pd.Series, int]]:
    """(configuration row, seed) pairs the means frontier still needs for K seeds per point.

    Seeds of a configuration are its search trial's seed s0 (that run counts) and s0+1 ... s0+K-1.
    A seed whose run failed for a reason of its own (non-finite loss, OOM) counts as tried.
    """
    tried = {(*_key(r), r["seed"]) for _, r in seeds_df.iterrows()
             if r["state"] == "COMPLETE" or (r["state"] == "FAIL" and r[REASON_ATTR] != "interrupted")}
    tried |= {(*_key(r), r["seed"]) for _, r in rows.iterrows()}
    todo = []
    for _, point in means_frontiers(rows).iterrows():
        first = rows[[_key(r) == _key(point) for _, r in rows.iterrows()]].iloc[0]
        s0 = int(first["seed"])
        todo += [(first, s) for s in range(s0, s0 + k) if (*_key(point), s) not in tried]
    return todo


def confirm_seeds(study: str, storage: str, k: int, *, data_dir: str | None = None, device: str = "auto",
                  reporter: Reporter = quiet) -> pd.DataFrame:
    """Retrain until every point of the frontier on seed means has k seeds; return that frontier.

    The frontier is recomputed after each round: a configuration whose mean drops may let another,
    not yet confirmed, onto it, which is then confirmed too. Every run is a trial of <study>.seeds
    keyed by (configuration, seed), so an interrupted or repeated confirm retrains nothing twice.
    """
    if k < 1:
        raise UsageError(f"--seeds must be at least 1, got {k}")
    fr = load_frontier(study, storage)
    cfg = study_config(fr, data_dir=data_dir, device=device)
    seeds_study, data = None, None
    while True:
        seeds_df = load_seed_rows(study, storage)
        rows = seed_rows(fr, seeds_df)
        todo = missing_runs(rows, seeds_df, k)
        if not todo:
            break
        if data is None:
            data = load_checked_task(fr, cfg)
            seeds_study = _open_seeds(study, storage)
            reporter(SeedsStart(seeds_study_name(study), safe_url(storage)))
        for i, (row, seed) in enumerate(todo):
            reporter(RunStart(row, seed, i, len(todo)))
            reporter(RunEnd(row, seed, **_train_seed(seeds_study, cfg, data, row, seed)))
    return means_frontiers(rows)


def _train_seed(study: optuna.Study, cfg: RunConfig, data: TaskData, row: pd.Series, seed: int) -> dict:
    """One (configuration, seed) run as a trial of the seeds study, through the trial's training code."""
    rec = replace(TrialRecord.from_row(row), seed=seed, epochs=cfg.epochs)
    with warnings.catch_warnings():  # the retrying storage keeps heartbeats for the search; a seed run sends none
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        trial = study.ask()
    for key, v in {**rec.to_attrs(), "source_trial": int(row["trial"])}.items():
        trial.set_user_attr(key, v)
    try:
        _, res = train(rec.spec, data, lr=rec.lr, epochs=rec.epochs, batch_size=cfg.batch_size, seed=rec.seed)
    except TrialFailed as e:
        trial.set_user_attr(REASON_ATTR, str(e))
        study.tell(trial, state=TrialState.FAIL)
        return {"reason": str(e)}
    except BaseException:
        trial.set_user_attr(REASON_ATTR, "interrupted")  # never leave a RUNNING trial behind
        study.tell(trial, state=TrialState.FAIL)
        raise
    for key, v in result_attrs(res).items():
        trial.set_user_attr(key, v)
    study.tell(trial, [float(rec.params), res.psnr_val])
    return {"reason": None, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "seconds": res.seconds}


def frontier_model(row: pd.Series, data: TaskData, cfg: RunConfig, study_dir: str | Path
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A frontier point's trained model: its cached weights, else retrained exactly as its trial was.

    The search keeps the weights of each trial that completes on its family's Pareto set
    (search.trial), so every point of the search's own front is normally cached. Missing
    ones (a point that only seed means put on the front, a file lost to a kill or a full disk, a
    trial run on another host) are retrained with the trial's seed, lr and epochs through
    training.loop.train (bit-exact on CPU) and then cached, so only the first report pays. The model's
    validation PSNR (stored with the weights, or retrained) is returned to show the match.
    """
    rec = TrialRecord.from_row(row)
    path = weights_path(study_dir, rec.family, row["trial"])
    if path.is_file():
        payload = load_weights(path, data.test.inputs.device)
        model = build(rec.spec).to(data.test.inputs.device)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), {"source": "cached", "psnr_val": payload.get("psnr_val")}
    model, res = train(rec.spec, data, lr=rec.lr, epochs=rec.epochs, batch_size=cfg.batch_size, seed=rec.seed)
    save_weights(path, rec, model, res)
    return model.eval(), {"source": "retrained", "psnr_val": res.psnr_val}
