"""Study storage: opening one study per family, the settings that define a study, URLs without secrets.

SQLite is the single-machine default (WAL and a busy timeout keep several workers on one file free
of "database is locked"); any Optuna RDB URL works, PostgreSQL for several hosts.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hgsearch import optuna_seam as seam
from hgsearch.config import STUDY_DB, RunConfig
from hgsearch.errors import HgsearchError, StorageError, StudyMismatchError, UsageError
from hgsearch.models import FAMILIES
from hgsearch.resilient import ResilientStorage, wait_out
from hgsearch.space import SPACE_VERSION, SpaceConfig
from hgsearch.tasks import TaskData

DIRECTIONS = ["minimize", "maximize"]  # (parameter count, validation PSNR)


METRIC_NAMES = ["params", "psnr_val"]


SETTINGS_KEY = "hgsearch_settings"


HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats


GRACE_PERIOD = 60  # a RUNNING trial whose last heartbeat is older than this is stale


SQLITE_TIMEOUT = 60  # seconds a SQLite writer waits for the lock instead of failing "database is locked"


def family_study_name(study: str, family: str) -> str:
    return f"{study}.{family}"


def safe_url(url: str) -> str:
    """The storage URL with any password masked, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def scrubbed(e: BaseException, url: str) -> str:
    """An error's first line with the storage URL and its password removed (drivers may echo them)."""
    text = first_line(e).replace(url, safe_url(url))
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = re.search(r"://[^:/@]*:([^@]*)@", url)
        password = password.group(1) if password else None
    return text.replace(str(password), "***") if password else text


_storages: dict[str, ResilientStorage] = {}


_CREATE_RACE = re.compile(r"UniqueViolation|DuplicateTable|already exists|duplicate key", re.I)


def _prepare_sqlite(url: str) -> None:
    """Check a SQLite file is a database and switch it to WAL (readers never block the writer).

    WAL plus a 60 s busy timeout is what keeps several workers on one SQLite file free of
    "database is locked" (measured in notes/search-api.md). WAL needs a local filesystem: use a
    server database (PostgreSQL) for hosts that share a study.
    """
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    p = Path(path)
    if not p.parent.is_dir():
        raise StorageError(f"cannot open storage {safe_url(url)}: directory {p.parent} does not exist")
    try:
        con = sqlite3.connect(p, timeout=SQLITE_TIMEOUT)
        try:
            con.execute("PRAGMA journal_mode=WAL").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(
            f"cannot open storage {safe_url(url)}: {e} (corrupted or not a SQLite file); move it away "
            "or pass a new --study / --storage"
        ) from None


def make_storage(url: str, retry_seconds: float = RunConfig.storage_retry_seconds) -> ResilientStorage:
    """The run's storage object (one per URL and process), with heartbeats and SQLite tuned for workers.

    It retries its calls through a database outage of up to retry_seconds (hgsearch.resilient).
    """
    if url in _storages:
        _storages[url].limit = retry_seconds
        return _storages[url]
    # pool_pre_ping: a pooled connection the server dropped (restart, failover, idle timeout) is
    # noticed and replaced before use, instead of failing the next call.
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        if url.startswith("sqlite"):
            _prepare_sqlite(url)
            kwargs["engine_kwargs"]["connect_args"] = {"timeout": SQLITE_TIMEOUT}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental" (stable since 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = wait_out(lambda: optuna.storages.RDBStorage(  # a worker may start mid-outage
                        url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, **kwargs
                    ), safe_url(url), retry_seconds)
                break
            except Exception as e:
                # Optuna creates its tables without a lock: hosts starting at once on an empty
                # server database can collide (UniqueViolation, DuplicateTable). The loser retries.
                if attempt == 4 or not _CREATE_RACE.search(repr(e) + repr(e.__cause__)):
                    raise
                time.sleep(random.uniform(0.2, 1.0))
    except HgsearchError:
        raise
    except Exception as e:  # SQLAlchemy, driver import and URL errors all land here
        if safe_url(url).startswith("<"):
            raise StorageError("invalid --storage URL: give an Optuna RDB URL such as "
                               "sqlite:///results/study.db or postgresql://user@host/db") from None
        raise StorageError(f"cannot open storage {safe_url(url)}: {scrubbed(e, url)}; check the URL, the "
                           "server and its driver (pip install hgsearch[postgres])") from None
    # Optuna puts its cache in front of an RDBStorage it is given; given this wrapper, it does not.
    _storages[url] = ResilientStorage(seam.CachedStorage(storage), safe_url(url), retry_seconds,
                                      GRACE_PERIOD)
    return _storages[url]


# Settings added after studies already existed, with the value those studies implicitly used.
ADDED_SETTINGS = {"augment": "none", "train_size": 0, "space_version": 1, "pruning": {"rule": "none"}}


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

    The data directory is not stored (it belongs to the machine, not the study): pass it when the
    dataset is not found where `run` would look; the dataset checksum guards against other data.
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
                     augment=s["augment"], train_size=int(s["train_size"]), space=SpaceConfig(**space), **extra)


def make_study_dir(cfg: RunConfig) -> None:
    """Create results/<study> (SQLite file, checkpoints); an unwritable place fails early and clearly."""
    try:
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cfg.study_dir, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise StorageError(f"cannot create {cfg.study_dir} ({e.strerror}): pass a writable --results-dir") from None


def make_sampler(cfg: RunConfig, family: str, n_trials: int) -> optuna.samplers.BaseSampler:
    # Seeded from the run seed and the number of trials already in the study (the new trial's number),
    # afresh for each trial: a resumed run does not replay start-up configurations it already tried,
    # and workers get different configurations.
    return optuna.samplers.TPESampler(
        seed=(cfg.seed * 1_000_003 + FAMILIES.index(family) * 7919 + n_trials) % 2**32,
        multivariate=True,
        n_startup_trials=10,
        constant_liar=True,  # trials claimed together (a pack, other workers) get different configurations
    )


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
            study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS,
                                        sampler=make_sampler(cfg, fam, 0), load_if_exists=True)
            if SETTINGS_KEY not in study.user_attrs:
                study.set_user_attr(SETTINGS_KEY, settings(cfg, data, fam))
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, also under pytest
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(METRIC_NAMES)
            studies[fam] = study
    except HgsearchError:
        raise
    except Exception as e:
        raise StorageError(f"cannot use storage {safe_url(url)}: {scrubbed(e, url)}") from None
    return studies


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # final outcomes: what --trials counts


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def default_study_dir(results_dir: str | Path) -> str:
    """The most recently used study under results_dir, for `frontier` without --study."""
    dbs = sorted(Path(results_dir).glob(f"*/{STUDY_DB}"), key=lambda p: p.stat().st_mtime)
    if not dbs:
        raise UsageError(f"no study found under {results_dir}/: run `hgsearch run --budget ...` first, or pass --study")
    return dbs[-1].parent.name
