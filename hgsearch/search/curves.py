"""Learning curves as the search stores them: per-epoch validation PSNR on each trial (curves.csv: results.curves).

A curve is the user attribute CURVE_KEY, the list of validation PSNRs after epoch 1, 2, ..., rewritten
after every epoch together with CURVE_SECONDS_KEY (the trial's wall seconds at each epoch end); the
pruner and curves.csv read it from there.

A trial that trains all its epochs also gets its curve as Optuna intermediate values (step = epoch),
written through the storage at its last epoch (search.epoch_hook, store.optuna_seam), where
optuna-dashboard's learning-curve chart and study.trials_dataframe() look for it. Only then, because
Optuna 5.0's TPE ranks PRUNED trials by their last intermediate value using study.direction, which
raises RuntimeError in a two-objective study such as ours (optuna/samplers/_tpe/sampler.py,
_get_pruned_trial_score; a PRUNED trial without intermediate values is never asked for a direction).
A trial written at its last epoch is told COMPLETE, or FAIL if it breaks before, which TPE skips;
while it runs, TPE's constant liar files it with the running trials, which are not ranked.
tests/test_intermediate_values.py runs a two-objective TPE study both ways. Trial.report is no way round: it
raises NotImplementedError in multi-objective studies.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial

from hgsearch.search.pruning import Observation
from hgsearch.store.schema import CURVE_KEY, CURVE_SECONDS_KEY


def curve_attrs(curve: list[float], seconds: list[float]) -> dict[str, list[float]]:
    """The user attributes to set on a trial after an epoch (both lists are one entry per epoch)."""
    return {CURVE_KEY: [float(v) for v in curve], CURVE_SECONDS_KEY: [float(s) for s in seconds]}


def observation(family: str, trial: FrozenTrial) -> Observation | None:
    """A stored trial as the pruner sees it, or None before its first epoch (or without a size)."""
    curve = trial.user_attrs.get(CURVE_KEY)
    params = trial.user_attrs.get("params")
    if not curve or params is None:
        return None
    return Observation(family, trial.number, int(params), tuple(float(v) for v in curve))


def carried(trials: Sequence[FrozenTrial], retry_of: Sequence[int], start: int) -> tuple[list[float], list[float]]:
    """A retry's curve and seconds up to the epoch it resumes from: the latest earlier attempt's that reach it.

    An attempt resumed at its last epoch trains none and writes no curve of its own, so the chain's
    curve is carried at the retry's start, not at its next epoch end: the pruner's peers, which read
    curves from the storage, must see it whatever attempt finished the configuration.
    """
    by_number = {t.number: t for t in trials}
    for number in reversed(retry_of):
        t = by_number.get(number)
        curve = list(t.user_attrs.get(CURVE_KEY) or []) if t is not None else []
        if len(curve) >= start:
            secs = list(t.user_attrs.get(CURVE_SECONDS_KEY) or [])
            return curve[:start], secs[:start]
    return [], []
