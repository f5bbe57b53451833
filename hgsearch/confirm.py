"""Seed retraining: train frontier configurations under more seeds (stored in <study>.seeds), and
rebuild a frontier point's trained model for its sample pictures (cached under weights/)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from hgsearch.analysis import CONFIG_KEYS, paper_front
from hgsearch.atomic import atomic_write
from hgsearch.config import RunConfig
from hgsearch.errors import StudyMismatchError, TrialFailed, UsageError
from hgsearch.frontier import (Frontier, load_frontier, load_seed_rows, seed_rows, seeds_study_name,
                               spec_from_row)
from hgsearch.search import load_task
from hgsearch.space import SpaceConfig
from hgsearch.storage import DIRECTIONS, METRIC_NAMES, safe_url
from hgsearch.tasks import TaskData
from hgsearch.train import train

Reporter = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


def config_from_settings(fr: Frontier, *, data_dir: str | None = None, device: str = "auto") -> RunConfig:
    """The RunConfig the study was searched with, from its stored settings (the user repeats nothing).

    The data directory is not stored (it belongs to the machine, not the study): pass it when the
    dataset is not found where `run` would look; the dataset checksum guards against other data.
    """
    s = next(iter(fr.settings.values()), {})
    if not s:
        raise UsageError(f"study {fr.study!r} stores no settings: it was not made by `hgsearch run`")
    space = {k: tuple(v) if isinstance(v, list) else v for k, v in (s.get("space") or {}).items()}
    extra = {"noise_sigma": s["noise_sigma"]} if s.get("noise_sigma") is not None else {}
    return RunConfig(budget=int(s["budget"]), task=s["task"], dataset=s["dataset"], data_dir=data_dir,
                     epochs=int(s["epochs"]), seed=int(s["seed"]), device=device, fixed_win=bool(s["fixed_win"]),
                     batch_size=int(s["batch_size"]), val_size=int(s["val_size"]), study=fr.study,
                     augment=s.get("augment", "none"), train_size=int(s.get("train_size", 0)),
                     space=SpaceConfig(**space), **extra)


def load_checked_task(fr: Frontier, cfg: RunConfig) -> TaskData:
    """The study's task data, refused when the dataset's checksum differs from the stored one."""
    data = load_task(cfg)
    stored = next(iter(fr.settings.values()), {}).get("dataset_checksum")
    if stored and data.checksum != stored:
        raise StudyMismatchError(
            f"the {cfg.dataset} data found ({data.checksum[:12]}...) is not the data study {fr.study!r} "
            f"was searched on ({stored[:12]}...): pass the original files with --data-dir")
    return data


def _key(row: pd.Series | dict[str, Any]) -> tuple:
    return tuple(row[k] for k in CONFIG_KEYS)


def _open_seeds(study: str, storage: str) -> optuna.Study:
    # Trials here are fixed configurations: nothing is sampled, so the cheapest sampler will do.
    s = optuna.create_study(study_name=seeds_study_name(study), storage=storage, directions=DIRECTIONS,
                            sampler=optuna.samplers.RandomSampler(seed=0), load_if_exists=True)
    if "of_study" not in s.user_attrs:
        s.set_user_attr("of_study", study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            s.set_metric_names(METRIC_NAMES)
    return s


def family_fronts(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's frontier (seed means, best lr, upper envelope) of each family, stacked."""
    parts = [paper_front(part) for _, part in rows.groupby("family", sort=True)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else paper_front(rows)


def missing_runs(rows: pd.DataFrame, seeds_df: pd.DataFrame, k: int) -> list[tuple[pd.Series, int]]:
    """(configuration row, seed) pairs the means frontier still needs for K seeds per point.

    Seeds of a configuration are its search trial's seed s0 (that run counts) and s0+1 ... s0+K-1.
    A seed whose run failed for a reason of its own (non-finite loss, OOM) counts as tried.
    """
    tried = {(*_key(r), r["seed"]) for _, r in seeds_df.iterrows()
             if r["state"] == "COMPLETE" or (r["state"] == "FAIL" and r["fail_reason"] != "interrupted")}
    tried |= {(*_key(r), r["seed"]) for _, r in rows.iterrows()}
    todo = []
    for _, point in family_fronts(rows).iterrows():
        first = rows[[_key(r) == _key(point) for _, r in rows.iterrows()]].iloc[0]
        s0 = int(first["seed"])
        todo += [(first, s) for s in range(s0, s0 + k) if (*_key(point), s) not in tried]
    return todo


def confirm_seeds(study: str, storage: str, k: int, *, data_dir: str | None = None, device: str = "auto",
                  reporter: Reporter = _quiet) -> pd.DataFrame:
    """Retrain until every point of the frontier on seed means has k seeds; return that frontier.

    The frontier is recomputed after each round: a configuration whose mean drops may let another,
    not yet confirmed, onto it, which is then confirmed too. Every run is a trial of <study>.seeds
    keyed by (configuration, seed), so an interrupted or repeated confirm retrains nothing twice.
    """
    if k < 1:
        raise UsageError(f"--seeds must be at least 1, got {k}")
    fr = load_frontier(study, storage)
    cfg = config_from_settings(fr, data_dir=data_dir, device=device)
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
            reporter("start", {"study": seeds_study_name(study), "storage": safe_url(storage)})
        for i, (row, seed) in enumerate(todo):
            reporter("run_start", {"row": row, "seed": seed, "index": i, "total": len(todo)})
            reporter("run_end", {"row": row, "seed": seed, **_train_seed(seeds_study, cfg, data, row, seed)})
    return family_fronts(rows)


def _train_seed(study: optuna.Study, cfg: RunConfig, data: TaskData, row: pd.Series, seed: int) -> dict:
    """One (configuration, seed) run as a trial of the seeds study, through the trial's training code."""
    spec = spec_from_row(row)
    trial = study.ask()
    attrs = {**spec.to_dict(), "params": spec.params, "trainable_params": spec.trainable_params,
             "lr": float(row["lr"]), "seed": seed, "epochs": cfg.epochs, "source_trial": int(row["trial"])}
    for key, v in attrs.items():
        trial.set_user_attr(key, v)
    try:
        _, res = train(spec, data, lr=float(row["lr"]), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed)
    except TrialFailed as e:
        trial.set_user_attr("fail_reason", str(e))
        study.tell(trial, state=TrialState.FAIL)
        return {"reason": str(e)}
    except BaseException:
        trial.set_user_attr("fail_reason", "interrupted")  # never leave a RUNNING trial behind
        study.tell(trial, state=TrialState.FAIL)
        raise
    for key, v in {"psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "train_loss": res.train_loss,
                   "seconds": res.seconds}.items():
        trial.set_user_attr(key, v)
    study.tell(trial, [float(spec.params), res.psnr_val])
    return {"reason": None, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "seconds": res.seconds}


def means_front(fr: Frontier, seeds_df: pd.DataFrame) -> pd.DataFrame:
    """The paper's frontier on seed means, with std and seed counts and each point's first trial."""
    rows = seed_rows(fr, seeds_df)
    front = family_fronts(rows)
    first = rows.drop_duplicates(subset=CONFIG_KEYS, keep="first")
    extra = first[[*CONFIG_KEYS, "trial", "seed", "d_in", "d_out", "epochs"]]
    return front.merge(extra, on=CONFIG_KEYS, how="left")


def weights_path(study_dir: str | Path, family: str, trial: int) -> Path:
    """Where a search trial's final weights live (written by search when it keeps them, or by us)."""
    return Path(study_dir) / "weights" / f"{family}-{int(trial)}.pt"


def frontier_model(row: pd.Series, data: TaskData, cfg: RunConfig, study_dir: str | Path
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A frontier point's trained model: its cached weights, else retrained exactly as its trial was.

    The search stores configurations, not weights; retraining with the trial's seed, lr and epochs
    through train.train reproduces it (bit-exact on CPU), and the weights are then cached, so only
    the first report pays. The retrained validation PSNR is returned to show the match.
    """
    from hgsearch.models import build

    spec = spec_from_row(row)
    path = weights_path(study_dir, row["family"], row["trial"])
    if path.is_file():
        payload = torch.load(path, map_location=data.test.inputs.device, weights_only=True)
        model = build(spec).to(data.test.inputs.device)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), {"source": "cached", "psnr_val": payload.get("psnr_val")}
    model, res = train(spec, data, lr=float(row["lr"]), epochs=int(row["epochs"]), batch_size=cfg.batch_size,
                       seed=int(row["seed"]))
    payload = {"spec": spec.to_dict(), "state_dict": model.state_dict(), "lr": float(row["lr"]),
               "epochs": int(row["epochs"]), "seed": int(row["seed"]), "psnr_val": res.psnr_val,
               "psnr_test": res.psnr_test}
    atomic_write(path, lambda p: torch.save(payload, p))
    return model.eval(), {"source": "retrained", "psnr_val": res.psnr_val}
