"""The search loop: one Optuna study per family in one storage, run to N finished trials.

Guarantees of run_search (one process, or any number of processes/hosts on one storage):
- each family ends with exactly cfg.trials finished trials, COMPLETE or PRUNED (stopped early by
  the pruner, final like COMPLETE; never more: see claims.claim);
- a trial cut off (kill -9, Ctrl-C, lost host) is failed with its reason and queued again with the
  same configuration; the retry continues from the trial's last per-epoch checkpoint
  (hgsearch.training.checkpoint), so the result is the one an uninterrupted run gives. A configuration
  is dropped only when its attempts are cut off more than MAX_STALLED_RETRIES times in a row before
  finishing an epoch (trial.close_trial): kills between which it progresses never drop it;
- a RUNNING trial is considered dead when its worker's process is gone (same host: checked at
  once) or its heartbeat is older than GRACE_PERIOD seconds (any host), and is then retried as above.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.data.tasks import TaskData, load_task
from hgsearch.errors import HgsearchError, UsageError
from hgsearch.events import Done, Note, Reporter, Start, quiet
from hgsearch.model import space as space_mod
from hgsearch.model.families import ArchSpec
from hgsearch.search import settled
from hgsearch.search.claims import Claim, claim_runs, reap
from hgsearch.search.context import FamilySearch
from hgsearch.search.epoch_hook import hook_for
from hgsearch.search.executors import executor_for
from hgsearch.search.identity import open_studies
from hgsearch.search.trial import run_trials, sweep_checkpoints
from hgsearch.stop import check_stop
from hgsearch.store.resilient import set_listener
from hgsearch.store.schema import REASON_ATTR, finished
from hgsearch.store.storage import GRACE_PERIOD, safe_url
from hgsearch.training.baselines import baseline
from hgsearch.training.loop import TrainResult, train
from hgsearch.training.record import TrialRecord, save_weights

MAX_CONSECUTIVE_FAILURES = 10  # a study whose trials all fail is misconfigured, not unlucky


POLL_SECONDS = 2.0  # how often a worker looks again while other workers hold the last trials


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


def run_search(cfg: RunConfig, reporter: Reporter = quiet) -> dict[str, optuna.Study]:
    """Create or resume the studies and run until each family has cfg.trials finished trials.

    Safe to call from several processes or hosts on one storage (see the module docstring). Stops
    with Stopped (a KeyboardInterrupt) after request_stop() or a signal under stop_on_signals().
    """
    try:
        return _run_search(cfg, reporter)
    finally:
        set_listener(None)  # this run's reporter must not hear a later run's storage outages


def _run_search(cfg: RunConfig, reporter: Reporter) -> dict[str, optuna.Study]:
    if cfg.budget <= 0:
        raise UsageError("run needs a parameter budget: pass --budget, e.g. --budget 5M")
    data = load_task(cfg)
    families, notes = feasible_families(cfg, data.d_in, data.d_out)
    for note in notes:
        reporter(Note(note))
    check_stop()
    set_listener(lambda message: reporter(Note(message)))  # storage outages and recoveries
    studies = open_studies(cfg, families, data)
    executor, per_round = executor_for(cfg, data.train.inputs.device)
    searches = {fam: FamilySearch(study, cfg, fam, data, reporter, per_round) for fam, study in studies.items()}
    for search in searches.values():
        reap(search)
        sweep_checkpoints(search)
    reporter(Start(cfg.study_name, safe_url(cfg.storage_url), cfg.trials, {f: finished(s) for f, s in studies.items()},
                   baseline=baseline(data)))
    failures = dict.fromkeys(families, 0)
    on_epoch = hook_for(cfg)  # learning curves, and the pruner's stops at rungs
    t0 = time.perf_counter()
    pending = list(families)
    waited = False
    # Families take turns, so an interrupted run leaves both frontiers equally far along.
    while pending:
        all_wait = True
        for fam in list(pending):
            runs = claim_runs(searches[fam], per_round, on_epoch)
            if runs is Claim.DONE:
                pending.remove(fam)
                continue
            if runs is Claim.WAIT:
                continue
            all_wait = False
            for frozen in run_trials(searches[fam], runs, executor):
                failures[fam] = failures[fam] + 1 if frozen.state == TrialState.FAIL else 0
                if failures[fam] >= MAX_CONSECUTIVE_FAILURES:
                    raise HgsearchError(
                        f"{MAX_CONSECUTIVE_FAILURES} {fam} trials failed in a row (last: "
                        f"{frozen.user_attrs.get(REASON_ATTR)}): check --epochs, the lr range and the data"
                    )
        if pending and all_wait:
            if not waited:
                reporter(Note("the remaining trials are running in other workers; waiting "
                              f"for them (a dead worker's trial is retried after {GRACE_PERIOD} s)"))
                waited = True
            for _ in range(int(POLL_SECONDS / 0.1)):
                check_stop()
                time.sleep(0.1)
        if not pending and cfg.until_settled and (more := _more_trials(cfg, studies, data)) is not None:
            cfg, pending, waited = more[0], list(families), False
            searches = {fam: replace(search, cfg=cfg) for fam, search in searches.items()}
            reporter(Note(more[1]))
    reporter(Done(time.perf_counter() - t0))
    return studies


def _more_trials(cfg: RunConfig, studies: dict[str, optuna.Study], data: TaskData) -> tuple[RunConfig, str] | None:
    """With --until-settled: the run with settled.SETTLE_STEP more trials per family while the answer is not
    settled and the cap allows, and why; None to stop."""
    points = {fam: settled.points_of(study.get_trials(deepcopy=False)) for fam, study in studies.items()}
    grid = settled.budget_grid(cfg.budget, settled.comparison_floor(cfg.budget, cfg.space.min_fraction,
                                                                    data.d_in, data.d_out))
    verdicts = settled.verdicts(points, grid)
    cap = cfg.max_trials or 3 * cfg.trials
    if len(studies) < 2 or settled.is_settled(verdicts) or cfg.trials >= cap:
        return None
    trials = min(cap, cfg.trials + settled.SETTLE_STEP)
    open_ = ", ".join(f"{v.budget:,} ({v.state})" for v in verdicts if v.state not in ("settled", "one family"))
    return replace(cfg, trials=trials), (f"the answer is not settled at {open_ or 'any budget'}: "
                                         f"going on to {trials} trials per family (cap {cap})")


def train_single(
    cfg: RunConfig, *, family: str, width: int | None, bottleneck: int, depth: int, lr: float,
    save: str | Path | None = None, data: TaskData | None = None,
) -> tuple[ArchSpec, TrainResult]:
    """Train one configuration exactly as a trial would (same data, splits, seed and loop)."""
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    data = data if data is not None else load_task(cfg)
    d_x = space_mod.stream_width(data.d_in, data.d_out)
    if width is None:
        if family != "conventional":
            raise UsageError("--width is required for the hourglass family (the stream width d_z)")
        width = d_x
    # The families as the paper defines them (and the search samples them): Hourglass widens the
    # stream beyond the image, conventional keeps it at the image size.
    if family == "hourglass" and width <= d_x:
        raise UsageError(f"hourglass needs --width over the image size {d_x} (its stream is wider than the "
                         f"image), got {width}: use --width {d_x + 1} or more")
    if family == "conventional" and width != d_x:
        raise UsageError(f"conventional's stream width is the image size {d_x}, got --width {width}: "
                         "leave --width out")
    spec = ArchSpec(family, data.d_in, data.d_out, width, bottleneck, depth, cfg.fixed_win)
    if save is not None and not Path(save).parent.is_dir():
        raise UsageError(f"cannot save to {save}: directory {Path(save).parent} does not exist")
    model, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    if save is not None:
        save_weights(save, TrialRecord.of(spec, lr=lr, seed=cfg.seed, epochs=cfg.epochs), model, res)
    return spec, res
