"""Studies, storage and resume: one Optuna study per family in one storage, run to N completed trials."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hgsearch import space as space_mod
from hgsearch.config import RunConfig
from hgsearch.data import load_dataset
from hgsearch.errors import HgsearchError, StorageError, StudyMismatchError, TrialFailed, UsageError
from hgsearch.models import FAMILIES, ArchSpec
from hgsearch.tasks import TaskData, prepare
from hgsearch.train import TrainResult, resolve_device, train

# hgsearch reports through its own display; Optuna's per-trial INFO lines would interleave with it.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DIRECTIONS = ["minimize", "maximize"]  # (parameter count, validation PSNR)
METRIC_NAMES = ["params", "psnr_val"]
SETTINGS_KEY = "hgsearch_settings"
MAX_CONSECUTIVE_FAILURES = 10  # a study whose trials all fail is misconfigured, not unlucky

# reporter(event, info): the CLI's live display listens; the library never prints.
Reporter = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


def family_study_name(study: str, family: str) -> str:
    return f"{study}.{family}"


def safe_url(url: str) -> str:
    """The storage URL with any password masked, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def settings(cfg: RunConfig, data: TaskData, family: str) -> dict[str, Any]:
    """The settings that define a study: resuming with different ones would mix incomparable trials."""
    return {
        "task": cfg.task,
        "dataset": cfg.dataset,
        "dataset_checksum": data.checksum,
        "budget": cfg.budget,
        "epochs": cfg.epochs,
        "family": family,
        "fixed_win": cfg.fixed_win,
        "batch_size": cfg.batch_size,
        "val_size": cfg.val_size,
        "noise_sigma": cfg.noise_sigma if cfg.task == "denoise" else None,
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.space).items()},
        "seed": cfg.seed,
        "protocol": "AdamW(wd=0.01), linear decay to 0, MSE on sigmoid, PSNR per batch of 128",
        "d_in": data.d_in,
        "d_out": data.d_out,
        # Only when on, so studies made before the option existed still resume.
        **({"augment": cfg.augment} if cfg.augment != "none" else {}),
    }


def _storage(cfg: RunConfig) -> str:
    """The storage URL, creating the default SQLite directory; unwritable places fail early and clearly."""
    if cfg.storage is None:
        try:
            cfg.study_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {cfg.study_dir} ({e.strerror}): pass a writable --results-dir") from None
    return cfg.storage_url


def open_study(cfg: RunConfig, family: str, data: TaskData, *, create: bool = True) -> optuna.Study:
    """Create or resume the family's study; refuse to resume one made with different settings."""
    url = _storage(cfg)
    name = family_study_name(cfg.study_name, family)
    try:
        # The sampler is seeded from the run seed *and* the trials already there, so a resumed run
        # does not replay the random start-up configurations it already tried.
        existing = _count(url, name)
        sampler = optuna.samplers.TPESampler(
            seed=cfg.seed * 1_000_003 + FAMILIES.index(family) * 7919 + existing,
            multivariate=True,
            n_startup_trials=10,
        )
        study = optuna.create_study(
            study_name=name, storage=url, directions=DIRECTIONS, sampler=sampler, load_if_exists=True
        )
    except HgsearchError:
        raise
    except Exception as e:  # SQLAlchemy, driver import and URL errors all land here
        raise StorageError(f"cannot open storage {safe_url(url)}: {_first_line(e)}") from None
    wanted = settings(cfg, data, family)
    stored = study.user_attrs.get(SETTINGS_KEY)
    if stored is None:
        study.set_user_attr(SETTINGS_KEY, wanted)
        study.set_metric_names(METRIC_NAMES)
    elif stored != wanted:
        diff = [f"{k} ({stored.get(k)!r} -> {wanted.get(k)!r})" for k in wanted if stored.get(k) != wanted.get(k)]
        raise StudyMismatchError(
            f"study {cfg.study_name!r} was created with other settings: {'; '.join(diff)}; "
            "use the original settings to resume, or a new --study name"
        )
    return study


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _count(url: str, name: str) -> int:
    """Number of trials in a study, 0 if it does not exist yet."""
    try:
        return len(optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False))
    except KeyError:
        return 0


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_trial(study: optuna.Study, cfg: RunConfig, family: str, data: TaskData, reporter: Reporter) -> FrozenTrial:
    """Ask one configuration, train it, tell the result; a TrialFailed is recorded, not raised."""
    trial = study.ask()
    spec, lr = space_mod.sample(trial, family, cfg.budget, data.d_in, data.d_out, cfg.space, cfg.fixed_win)
    # Everything needed to rebuild the model from the storage alone, written before training.
    attrs = {**spec.to_dict(), "params": spec.params, "trainable_params": spec.trainable_params,
             "lr": lr, "seed": cfg.seed, "epochs": cfg.epochs}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    reporter("trial_start", {"family": family, "number": trial.number, "spec": spec, "lr": lr})

    def progress(epoch: int, step: int, steps: int, loss: float) -> None:
        reporter("progress", {"family": family, "epoch": epoch, "epochs": cfg.epochs,
                              "step": step, "steps": steps, "loss": loss})

    try:
        _, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                       progress=progress)
    except TrialFailed as e:
        trial.set_user_attr("fail_reason", str(e))
        frozen = study.tell(trial, state=TrialState.FAIL)
        reporter("trial_end", {"family": family, "trial": frozen, "reason": str(e)})
        return frozen
    except BaseException:
        # Ctrl-C or a crash: close the trial so it is not left RUNNING, then let it propagate.
        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        raise
    for k, v in {"psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "train_loss": res.train_loss,
                 "seconds": res.seconds}.items():
        trial.set_user_attr(k, v)
    frozen = study.tell(trial, [float(spec.params), res.psnr_val])
    reporter("trial_end", {"family": family, "trial": frozen, "reason": None})
    return frozen


def feasible_families(cfg: RunConfig, d_in: int, d_out: int) -> tuple[list[str], list[str]]:
    """(families to search, one-line notes on families skipped because the budget is too small)."""
    keep, notes = [], []
    for fam in cfg.families:
        if space_mod.size_range(fam, d_in, d_out, cfg.budget, cfg.space) is not None:
            keep.append(fam)
        else:
            need = space_mod.smallest(fam, d_in, d_out).params
            notes.append(f"{fam} cannot fit {cfg.budget:,} parameters (its smallest model has {need:,}); skipping it")
    if not keep:
        need = min(space_mod.smallest(f, d_in, d_out).params for f in cfg.families)
        raise UsageError(
            f"budget {cfg.budget:,} is below the smallest {'/'.join(cfg.families)} model on this task "
            f"({d_in}->{d_out}): use --budget {need:,} or more"
        )
    return keep, notes


def load_task(cfg: RunConfig) -> TaskData:
    """Read the dataset and build the task's splits on the run's device (once per process)."""
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    return prepare(dataset, cfg.task, val_size=cfg.val_size, noise_sigma=cfg.noise_sigma, augment=cfg.augment,
                   device=device)


def run_search(cfg: RunConfig, reporter: Reporter = _quiet) -> dict[str, optuna.Study]:
    """Create or resume the studies and run until each family has cfg.trials completed trials."""
    if cfg.budget <= 0:
        raise UsageError("run needs a parameter budget: pass --budget, e.g. --budget 5M")
    data = load_task(cfg)
    families, notes = feasible_families(cfg, data.d_in, data.d_out)
    for note in notes:
        reporter("note", {"message": note})
    studies = {fam: open_study(cfg, fam, data) for fam in families}
    reporter("start", {"study": cfg.study_name, "storage": safe_url(cfg.storage_url), "target": cfg.trials,
                       "done": {f: completed(s) for f, s in studies.items()}})
    failures = dict.fromkeys(families, 0)
    t0 = time.perf_counter()
    # Families take turns, so an interrupted run leaves both frontiers equally far along.
    while pending := [f for f in families if completed(studies[f]) < cfg.trials]:
        for fam in pending:
            frozen = run_trial(studies[fam], cfg, fam, data, reporter)
            failures[fam] = 0 if frozen.state == TrialState.COMPLETE else failures[fam] + 1
            if failures[fam] >= MAX_CONSECUTIVE_FAILURES:
                raise HgsearchError(
                    f"{MAX_CONSECUTIVE_FAILURES} {fam} trials failed in a row (last: "
                    f"{frozen.user_attrs.get('fail_reason')}): check --epochs, the lr range and the data"
                )
    reporter("done", {"seconds": time.perf_counter() - t0, "studies": studies})
    return studies


def study_exists(url: str, name: str) -> bool:
    try:
        return name in optuna.get_all_study_names(storage=url)
    except Exception as e:
        raise StorageError(f"cannot read storage {safe_url(url)}: {_first_line(e)}") from None


def default_study_dir(results_dir: str | Path) -> str:
    """The most recently used study under results_dir, for `frontier` without --study."""
    dbs = sorted(Path(results_dir).glob("*/study.db"), key=lambda p: p.stat().st_mtime)
    if not dbs:
        raise UsageError(f"no study found under {results_dir}/: run `hgsearch run --budget ...` first, or pass --study")
    return dbs[-1].parent.name


def train_single(
    cfg: RunConfig, *, family: str, width: int | None, bottleneck: int, depth: int, lr: float,
    save: str | Path | None = None,
) -> tuple[ArchSpec, TrainResult]:
    """Train one configuration exactly as a trial would (same data, splits, seed and loop)."""
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    data = load_task(cfg)
    if width is None:
        if family != "conventional":
            raise UsageError("--width is required for the hourglass family (the stream width d_z)")
        width = space_mod.stream_width(data.d_in, data.d_out)
    spec = ArchSpec(family, data.d_in, data.d_out, width, bottleneck, depth, cfg.fixed_win)
    if save is not None and not Path(save).parent.is_dir():
        raise UsageError(f"cannot save to {save}: directory {Path(save).parent} does not exist")
    model, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    if save is not None:
        from hgsearch.frontier import atomic_write

        payload = {"spec": spec.to_dict(), "state_dict": model.state_dict(), "lr": lr, "epochs": cfg.epochs,
                   "seed": cfg.seed, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test}
        atomic_write(Path(save), lambda p: torch.save(payload, p))
    return spec, res
