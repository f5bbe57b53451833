"""Studies, storage and resume: one Optuna study per family in one storage, run to N completed trials.

Guarantees of run_search (one process, or any number of processes/hosts on one storage):
- each family ends with exactly cfg.trials COMPLETE trials (never more: see claims.claim);
- a trial cut off (kill -9, Ctrl-C, lost host) is failed with its reason and queued again with the
  same configuration (up to MAX_RETRIES times); the retry continues from the trial's last
  per-epoch checkpoint (hgsearch.checkpoint), so the result is the one an uninterrupted run gives;
- a RUNNING trial is considered dead when its worker's process is gone (same host: checked at
  once) or its heartbeat is older than GRACE_PERIOD seconds (any host), and is then retried as above.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch import checkpoint
from hgsearch import space as space_mod
from hgsearch.claims import (RETRY_ATTR, WAIT, Heartbeat, Stopped, ask, check_stop, claim, close_trial, reap,
                             stop_requested)
from hgsearch.config import RunConfig
from hgsearch.data import load_dataset
from hgsearch.errors import HgsearchError, StorageError, TrialFailed, UsageError
from hgsearch.models import ArchSpec
from hgsearch.storage import GRACE_PERIOD, completed, first_line, open_studies, safe_url
from hgsearch.tasks import TaskData, prepare
from hgsearch.train import TrainResult, resolve_device, train

MAX_CONSECUTIVE_FAILURES = 10  # a study whose trials all fail is misconfigured, not unlucky


POLL_SECONDS = 2.0  # how often a worker looks again while other workers hold the last trials


PAUSE_ENV = "HGSEARCH_TEST_PAUSE_AT"


# reporter(event, info): the CLI's live display listens; the library never prints.
Reporter = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


_trials_run = [0]  # trials this process has started, for the test hook


def _pause_at(point: str) -> None:
    """Test hook: with HGSEARCH_TEST_PAUSE_AT=<point>[:<k>], print a marker and wait there, in the k-th
    trial this process runs (default 1), so a test can kill the process at a known place. Points:
    claimed (no configuration stored yet), epoch (mid-epoch, a checkpoint on disk), eval (training
    done, evaluation next), complete (told COMPLETE, checkpoint not yet removed). Returns on a stop."""
    want = os.environ.get(PAUSE_ENV)
    if not want or want.partition(":")[0] != point or int(want.partition(":")[2] or 1) != _trials_run[0]:
        return
    os.environ.pop(PAUSE_ENV)  # once per process
    os.write(2, f"HGSEARCH_PAUSED {point}\n".encode())
    while not stop_requested():
        time.sleep(0.05)


def run_trial(study: optuna.Study, cfg: RunConfig, family: str, data: TaskData, reporter: Reporter,
              trial: optuna.Trial | None = None) -> FrozenTrial:
    """Train one claimed trial (or ask one), checkpointing each epoch, and tell the result.

    A TrialFailed is recorded, not raised (the configuration is not retried: it would fail again).
    Any other exception (Ctrl-C, a storage error) closes the trial, queues it for retry and propagates.
    """
    if trial is None:
        trial = ask(study)
    heartbeat = Heartbeat(study._storage, trial._trial_id)
    ckpt: Path | None = None
    _trials_run[0] += 1
    try:
        heartbeat.start()
        _pause_at("claimed")
        spec, lr = space_mod.sample(trial, family, cfg.budget, data.d_in, data.d_out, cfg.space, cfg.fixed_win)
        # Everything needed to rebuild the model from the storage alone, written before training.
        attrs = {**spec.to_dict(), "params": spec.params, "trainable_params": spec.trainable_params,
                 "lr": lr, "seed": cfg.seed, "epochs": cfg.epochs}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        history = trial.user_attrs.get(RETRY_ATTR, [])
        origin = history[0] if history else trial.number
        ckpt = checkpoint.path_for(cfg.study_dir, family, origin)
        meta = {"study": cfg.study_name, "family": family, "origin": origin, **attrs,
                "batch_size": cfg.batch_size}
        resume, why = checkpoint.load(ckpt, meta)
        if why:
            reporter("note", {"message": f"{family} trial #{trial.number}: {why}"})
        reporter("trial_start", {"family": family, "number": trial.number, "spec": spec, "lr": lr,
                                 "retry_of": history, "resumed_epoch": int(resume["epoch"]) if resume else 0})

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            check_stop()
            reporter("progress", {"family": family, "epoch": epoch, "epochs": cfg.epochs,
                                  "step": step, "steps": steps, "loss": loss})
            if epoch >= 1 and step < steps:
                _pause_at("epoch")  # mid-epoch, with an earlier epoch's checkpoint on disk

        def on_epoch_end(state: dict[str, Any]) -> None:
            try:
                checkpoint.save(ckpt, state, meta)
            except OSError as e:
                raise StorageError(f"cannot write checkpoint {ckpt} ({e.strerror}): free space or pass a "
                                   "writable --results-dir") from None
            if state["epoch"] == cfg.epochs:
                _pause_at("eval")  # training done, evaluation next

        steps = -(-len(data.train) // cfg.batch_size)
        _, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                       progress=progress, report_every=max(1, min(50, steps // 4)), resume=resume,
                       on_epoch_end=on_epoch_end, stop_check=check_stop)
    except TrialFailed as e:
        heartbeat.stop()
        close_trial(study, study._storage.get_trial(trial._trial_id), str(e), retry=False)
        if ckpt is not None:
            checkpoint.remove(ckpt)
        frozen = study._storage.get_trial(trial._trial_id)
        reporter("trial_end", {"family": family, "trial": frozen, "reason": str(e)})
        return frozen
    except BaseException as e:
        heartbeat.stop()
        reason = f"interrupted by {e.signame}" if isinstance(e, Stopped) else (
            "interrupted" if isinstance(e, KeyboardInterrupt) else f"crashed: {type(e).__name__}: {first_line(e)}")
        with contextlib.suppress(Exception):  # best effort: if this fails, the next run reaps it
            close_trial(study, study._storage.get_trial(trial._trial_id), reason, retry=True)
        raise
    for k, v in {"psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "train_loss": res.train_loss,
                 "seconds": res.seconds}.items():
        trial.set_user_attr(k, v)
    try:
        frozen = study.tell(trial, [float(spec.params), res.psnr_val])
    except (UpdateFinishedTrialError, RuntimeError):
        # Another worker closed it as stale (this process stalled past the grace period): its
        # retry is queued, so this result is dropped to keep the count exact.
        frozen = study._storage.get_trial(trial._trial_id)
        reporter("trial_end", {"family": family, "trial": frozen,
                               "reason": "closed as stale by another worker; result dropped"})
        return frozen
    finally:
        heartbeat.stop()
    _pause_at("complete")
    checkpoint.remove(ckpt)
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
                   train_size=cfg.train_size, device=device)


def _sweep(study: optuna.Study, cfg: RunConfig, family: str) -> None:
    """Delete checkpoints left by trials that finished (e.g. killed between completing and cleaning up)."""
    keep = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        history = t.user_attrs.get(RETRY_ATTR, [])
        keep.add(history[0] if history else t.number)
    checkpoint.sweep(cfg.study_dir, family, keep)


def run_search(cfg: RunConfig, reporter: Reporter = _quiet) -> dict[str, optuna.Study]:
    """Create or resume the studies and run until each family has cfg.trials completed trials.

    Safe to call from several processes or hosts on one storage (see the module docstring). Stops
    with Stopped (a KeyboardInterrupt) after request_stop() or a signal under stop_on_signals().
    """
    if cfg.budget <= 0:
        raise UsageError("run needs a parameter budget: pass --budget, e.g. --budget 5M")
    data = load_task(cfg)
    families, notes = feasible_families(cfg, data.d_in, data.d_out)
    for note in notes:
        reporter("note", {"message": note})
    check_stop()
    studies = open_studies(cfg, families, data)
    for fam, study in studies.items():
        reap(study, fam, reporter)
        _sweep(study, cfg, fam)
    reporter("start", {"study": cfg.study_name, "storage": safe_url(cfg.storage_url), "target": cfg.trials,
                       "done": {f: completed(s) for f, s in studies.items()}})
    failures = dict.fromkeys(families, 0)
    t0 = time.perf_counter()
    pending = list(families)
    waited = False
    # Families take turns, so an interrupted run leaves both frontiers equally far along.
    while pending:
        all_wait = True
        for fam in list(pending):
            trial = claim(studies[fam], cfg, fam, reporter)
            if trial is None:
                pending.remove(fam)
                continue
            if trial is WAIT:
                continue
            all_wait = False
            frozen = run_trial(studies[fam], cfg, fam, data, reporter, trial)
            failures[fam] = failures[fam] + 1 if frozen.state == TrialState.FAIL else 0
            if failures[fam] >= MAX_CONSECUTIVE_FAILURES:
                raise HgsearchError(
                    f"{MAX_CONSECUTIVE_FAILURES} {fam} trials failed in a row (last: "
                    f"{frozen.user_attrs.get('fail_reason')}): check --epochs, the lr range and the data"
                )
        if pending and all_wait:
            if not waited:
                reporter("note", {"message": "the remaining trials are running in other workers; waiting "
                                  f"for them (a dead worker's trial is retried after {GRACE_PERIOD} s)"})
                waited = True
            for _ in range(int(POLL_SECONDS / 0.1)):
                check_stop()
                time.sleep(0.1)
    reporter("done", {"seconds": time.perf_counter() - t0, "studies": studies})
    return studies


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
        from hgsearch.atomic import atomic_write

        payload = {"spec": spec.to_dict(), "state_dict": model.state_dict(), "lr": lr, "epochs": cfg.epochs,
                   "seed": cfg.seed, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test}
        atomic_write(Path(save), lambda p: torch.save(payload, p))
    return spec, res
