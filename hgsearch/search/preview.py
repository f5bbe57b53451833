"""`run --dry-run`: the configurations a new study's sampler would train first, with timed estimates.

Nothing is written: each configuration is drawn by search.sampler.draw, as `run` draws it (seeded by
its place in the sequence of new configurations), so the preview is the run's own first configurations.
Only draws that do not depend on results are known in advance: a model-based sampler's random
start-up, every draw of qmc and random.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hgsearch.config import RunConfig
from hgsearch.model.families import ArchSpec

if TYPE_CHECKING:
    from hgsearch.data.tasks import TaskData

TIMED_STEPS = 3  # training steps timed per shape, after one untimed warm-up step


@dataclass(frozen=True)
class Planned:
    """One configuration the run would train, and its estimated training time per epoch here."""

    family: str
    number: int  # the trial number it gets in a new study
    spec: ArchSpec
    lr: float
    step_seconds: float  # median of TIMED_STEPS real training steps at the run's batch size
    steps_per_epoch: int

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch


class _Timed(Exception):
    """Raised from train()'s progress hook once enough steps were timed: the run stops there."""


def time_step(spec: ArchSpec, data: TaskData, lr: float, batch_size: int) -> float:
    """Median wall time of one training step of this shape, measured with train() itself."""
    import statistics

    from hgsearch.training.loop import train

    stamps: list[float] = []

    def progress(epoch: int, step: int, steps: int, loss: float) -> None:
        stamps.append(time.perf_counter())  # loss.item() has synchronised the device by now
        if len(stamps) > TIMED_STEPS:
            raise _Timed

    try:
        train(spec, data, lr=lr, epochs=1, batch_size=batch_size, progress=progress, report_every=1)
    except _Timed:
        pass
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(gaps) if gaps else float("nan")  # no gap: the epoch has a single step


def plan(cfg: RunConfig, n: int) -> tuple[list[Planned], list[str]]:
    """The first n configurations per family a new study would train (those fixed in advance), and notes."""
    import math

    import optuna

    from hgsearch.data.tasks import load_task
    from hgsearch.model import space
    from hgsearch.search.run import feasible_families
    from hgsearch.search.sampler import draw, fixed_in_advance

    data = load_task(cfg)
    families, notes = feasible_families(cfg, data.d_in, data.d_out)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    fixed = fixed_in_advance(cfg.sampler)
    out: list[Planned] = []
    warm = True  # the process's first steps pay for allocator and kernel warm-up: time one shape twice
    for fam in families:
        # A run's first draws see only earlier draws' configurations (their results play no part yet):
        # the preview shows them as trials still training.
        seen: list[optuna.trial.FrozenTrial] = []
        for i in range(n if fixed is None else min(n, fixed)):
            params, dists = draw(cfg, fam, i, seen, data.d_in, data.d_out)
            trial = optuna.trial.FixedTrial(params, number=i)
            spec, lr = space.sample(trial, fam, cfg.budget, data.d_in, data.d_out, cfg.space, cfg.fixed_win)
            seen.append(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=params,
                                                  distributions=dists))
            if warm:
                time_step(spec, data, lr, cfg.batch_size)
                warm = False
            out.append(Planned(fam, i, spec, lr, time_step(spec, data, lr, cfg.batch_size), steps))
    if fixed is not None and n > fixed:
        notes.append(f"only the first {fixed} trials per family are fixed in advance; "
                     f"after them the {cfg.sampler} sampler picks from the results")
    return out, notes
