"""The sampler each trial is sampled with: TPE, seeded per trial so workers and resumes never repeat a draw."""

from __future__ import annotations

import optuna

from hgsearch.config import RunConfig
from hgsearch.names import FAMILIES

# TPE's random start-up: a family's first STARTUP_TRIALS trials are drawn at random, the later ones
# from a model of the results. 10 is Optuna's default, kept so the default --trials 20 leaves TPE half
# of the trials to steer. Random draws are known in advance: they are what `run --dry-run` previews.
STARTUP_TRIALS = 10


def make_sampler(cfg: RunConfig, family: str, n_trials: int) -> optuna.samplers.BaseSampler:
    # Seeded from the run seed and the number of trials already in the study (the new trial's number),
    # afresh for each trial: a resumed run does not replay start-up configurations it already tried,
    # and workers get different configurations.
    return optuna.samplers.TPESampler(
        seed=(cfg.seed * 1_000_003 + FAMILIES.index(family) * 7919 + n_trials) % 2**32,
        multivariate=True,
        n_startup_trials=STARTUP_TRIALS,
        constant_liar=True,  # trials claimed together (a pack, other workers) get different configurations
    )
