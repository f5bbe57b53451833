"""What defines a study: its stored settings, checked on resume, and opening both families' studies."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.data.tasks import TaskData
from hgsearch.errors import HgsearchError, StorageError, StudyMismatchError, UsageError
from hgsearch.model.space import SPACE_VERSION
from hgsearch.store.schema import DATA_PATH_KEY, DIRECTIONS, METRIC_NAMES, SETTINGS_KEY, family_study_name
from hgsearch.store.storage import make_storage, safe_url, scrubbed

# Settings added after studies already existed, with the value those studies implicitly used.
ADDED_SETTINGS = {"augment": "none", "train_size": 0, "space_version": 1, "pruning": {"rule": "none"},
                  "image_size": 0}


def pruning_settings(cfg: RunConfig) -> dict[str, Any]:
    """What decides which trials are stopped early; under "none" the other knobs change nothing."""
    if cfg.pruning == "none":
        return {"rule": "none"}
    return {"rule": cfg.pruning, "min_epochs": cfg.min_epochs, "reduction_factor": cfg.reduction_factor,
            "margin": cfg.prune_margin, "min_peers": cfg.prune_min_peers, "epoch_eval_size": cfg.epoch_eval_size}


def settings(cfg: RunConfig, data: TaskData, family: str) -> dict[str, Any]:
    """The settings that define a study: resuming with different ones would mix incomparable trials.

    Not here, so free to change between runs: --trials, --device, --results-dir, --data-dir (the
    data's checksum is here), --storage, the display, and the number of workers.
    """
    return {
        "task": cfg.task,
        "dataset": cfg.dataset,
        "dataset_checksum": data.checksum,
        "budget": cfg.budget,
        "epochs": cfg.epochs,
        "family": family,
        "fixed_win": cfg.fixed_win,
        "augment": cfg.augment,
        "train_size": cfg.train_size,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "val_size": cfg.val_size,
        "noise_sigma": cfg.noise_sigma if cfg.task == "denoise" else None,
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.space).items()},
        "space_version": SPACE_VERSION,  # how trials map to shapes: another version's trials do not mix
        "pruning": pruning_settings(cfg),
        "seed": cfg.seed,
        "protocol": "AdamW(wd=0.01), linear decay to 0, MSE on sigmoid, PSNR per batch of 128",
        "d_in": data.d_in,
        "d_out": data.d_out,
    }


def config_from_settings(stored: dict[str, Any], study: str, *, data_dir: str | None = None,
                         device: str = "auto") -> RunConfig:
    """The inverse of settings(): the RunConfig a study was searched with (the user repeats nothing).

    The data directory is not a setting (it belongs to the machine, not the study): data_dir is where to
    read the data, None to look where `run` would; the dataset checksum guards against other data.
    """
    if not stored:
        raise UsageError(f"study {study!r} stores no settings: it was not made by `hgsearch run`")
    s = {**ADDED_SETTINGS, **stored}
    space = {k: tuple(v) if isinstance(v, list) else v for k, v in (s.get("space") or {}).items()}
    extra = {"noise_sigma": s["noise_sigma"]} if s.get("noise_sigma") is not None else {}
    prune = s["pruning"]
    extra.update({"pruning": prune["rule"]} if prune["rule"] == "none" else {
        "pruning": prune["rule"], "min_epochs": int(prune["min_epochs"]),
        "reduction_factor": int(prune["reduction_factor"]),
        "prune_margin": float(prune["margin"]), "prune_min_peers": int(prune["min_peers"]),
        "epoch_eval_size": int(prune["epoch_eval_size"])})
    return RunConfig(budget=int(s["budget"]), task=s["task"], dataset=s["dataset"], data_dir=data_dir,
                     epochs=int(s["epochs"]), seed=int(s["seed"]), device=device, fixed_win=bool(s["fixed_win"]),
                     batch_size=int(s["batch_size"]), val_size=int(s["val_size"]), study=study,
                     augment=s["augment"], train_size=int(s["train_size"]),
                     image_size=int(s["image_size"]), space=SpaceConfig(**space), **extra)


def make_study_dir(cfg: RunConfig) -> None:
    """Create results/<study> (SQLite file, checkpoints); an unwritable place fails early and clearly."""
    try:
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cfg.study_dir, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise StorageError(f"cannot create {cfg.study_dir} ({e.strerror}): pass a writable --results-dir") from None


def open_studies(cfg: RunConfig, families: list[str], data: TaskData) -> dict[str, optuna.Study]:
    """Create or resume each family's study; refuse, before writing anything, to resume with other settings."""
    url = cfg.storage_url
    if cfg.storage is None:
        make_study_dir(cfg)  # holds the SQLite file
    storage = make_storage(url, cfg.storage_retry_seconds)
    try:
        names = set(optuna.get_all_study_names(storage=storage))
        diffs: dict[str, str] = {}
        for fam in families:
            name = family_study_name(cfg.study_name, fam)
            if name not in names:
                continue
            stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SETTINGS_KEY) or {}
            wanted = settings(cfg, data, fam)
            for k in [*wanted, *(k for k in stored if k not in wanted)]:
                if stored.get(k, ADDED_SETTINGS.get(k)) != wanted.get(k):
                    diffs.setdefault(k, f"{k} (study: {stored.get(k, ADDED_SETTINGS.get(k))!r}, "
                                        f"now: {wanted.get(k)!r})")
        if diffs:
            new = next(f"{cfg.study_name}-{i}" for i in range(2, 10**6)
                       if not any(n.startswith(f"{cfg.study_name}-{i}.") for n in names))
            raise StudyMismatchError(
                f"study {cfg.study_name!r} was created with other settings: {'; '.join(diffs.values())}; "
                f"rerun with the original settings to resume it, or start a new study with --study {new}"
            )
        if cfg.storage is not None:
            make_study_dir(cfg)  # holds the checkpoints
        studies = {}
        for fam in families:
            name = family_study_name(cfg.study_name, fam)
            # Its sampler is never asked for a value (search.sampler.draw stores every value first):
            # the cheapest one, so that creating a trial costs no model fit.
            study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS,
                                        sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
            if SETTINGS_KEY not in study.user_attrs:
                study.set_user_attr(SETTINGS_KEY, settings(cfg, data, fam))
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, also under pytest
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(METRIC_NAMES)
            if cfg.data_dir is not None:
                path = str(Path(cfg.data_dir).expanduser().resolve())
                if study.user_attrs.get(DATA_PATH_KEY) != path:
                    study.set_user_attr(DATA_PATH_KEY, path)
            studies[fam] = study
    except HgsearchError:
        raise
    except Exception as e:
        raise StorageError(f"cannot use storage {safe_url(url)}: {scrubbed(e, url)}") from None
    return studies
