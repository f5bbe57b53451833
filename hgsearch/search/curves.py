"""Learning curves as the search stores them: per-epoch validation PSNR on each trial (curves.csv: results.curves).

Optuna refuses trial.report() in multi-objective studies, and writing intermediate values through
the storage instead would break TPE (it ranks PRUNED trials by their last intermediate value using
study.direction, which raises with two objectives). So a curve is the user attribute CURVE_KEY, the
list of validation PSNRs after epoch 1, 2, ..., rewritten after every epoch together with
CURVE_SECONDS_KEY (the trial's wall seconds at each epoch end); optuna-dashboard shows both.
"""

from __future__ import annotations

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






