"""What the library reports while it runs, as small frozen events, and the Reporter that receives them.

The search (search.run, claims, search.trial, workers) and confirm print nothing: they call a Reporter
with these events, and the CLI's display (or a notebook) decides what to show. What the library draws
itself is a progress bar on stderr: a dataset download's (data.download.fetch) and, on a terminal, an
image folder's first decoding (data.formats.folder.read). Events
cross process boundaries under `run --workers` (pickled), so their fields are plain data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hgsearch.model.families import ArchSpec
    from hgsearch.training.baselines import Baseline


@dataclass(frozen=True)
class Note:
    """Something the user should know (a skipped family, a reaped trial, an unusable checkpoint)."""

    message: str


@dataclass(frozen=True)
class Start:
    """The studies are open: `done` finished trials per family of `target` each."""

    study: str
    storage: str  # the URL, password masked
    target: int
    done: dict[str, int]
    workers: int = 1
    baseline: Baseline | None = None  # the task's trivial baseline, shown beside every trial's PSNR


@dataclass(frozen=True)
class TrialStart:
    family: str
    number: int
    spec: ArchSpec
    lr: float
    retry_of: list[int]  # numbers of the earlier, cut-off trials of this configuration
    resumed_epoch: int  # epochs restored from the checkpoint (0: from the start)
    worker: int | None = None  # set by workers.run_parallel; None in a single-process run


@dataclass(frozen=True)
class Progress:
    """Every few steps (loss of the last batch) and at each epoch end (the epoch's mean loss)."""

    family: str
    epoch: int  # 0-based epoch being trained
    epochs: int
    step: int
    steps: int  # steps per epoch
    loss: float
    worker: int | None = None


@dataclass(frozen=True)
class TrialEnd:
    family: str
    trial: FrozenTrial  # as stored: its state and user attrs (the results when it completed)
    reason: str | None  # None when it completed; else why it failed or stopped
    worker: int | None = None


@dataclass(frozen=True)
class Done:
    seconds: float


@dataclass(frozen=True)
class SeedsStart:
    """confirm: the seed runs go to this study."""

    study: str
    storage: str


@dataclass(frozen=True)
class RunStart:
    """confirm: training one frontier configuration (a trials-table row) with one more seed."""

    row: Any  # a pandas Series of results.trials.COLUMNS
    seed: int
    index: int
    total: int


@dataclass(frozen=True)
class RunEnd:
    row: Any
    seed: int
    reason: str | None  # None when the run finished; then the results are set
    psnr_val: float | None = None
    psnr_test: float | None = None
    seconds: float | None = None


Event = Note | Start | TrialStart | Progress | TrialEnd | Done | SeedsStart | RunStart | RunEnd

Reporter = Callable[[Event], None]


def quiet(event: Event) -> None:
    """The reporter that ignores everything (the default)."""


def from_worker(event: Event, worker: int) -> Event:
    """The event tagged with the worker process that sent it, for the events that carry one."""
    return replace(event, worker=worker) if any(f.name == "worker" for f in fields(event)) else event
