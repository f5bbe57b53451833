"""How each new configuration is drawn: seeded by its place in the sequence of new ones, on a canonical history.

A study's answer must not depend on how often it was interrupted. So the k-th new configuration of a
family (draw_index: its place among the trials that brought a new configuration, whatever their trial
numbers) is drawn by a fresh sampler seeded by (run seed, family, k), on a fresh in-memory study that
holds the canonical history (history): every earlier configuration once, in draw order, as its
latest attempt stands (a finished one with its result, one still training as RUNNING for the
constant liar). Failed attempts that were retried, surplus claims and trials cut off before their
configuration was stored are not in it, so a resumed run sees exactly what the uninterrupted run saw
and draws the same configurations (docs/interruptions.md says what holds with several workers).
The real study's own sampler is never asked for a value: draw() stores the values in the trial
before space.sample reads them, as a retry's are.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hgsearch.config import RunConfig
from hgsearch.model import space
from hgsearch.names import SAMPLERS
from hgsearch.store.schema import DIRECTIONS, DRAW_ATTR, RETRY_ATTR

# The model-based samplers' random start-up: a family's first STARTUP_TRIALS configurations are drawn
# at random, the later ones from a model of the results (10 is Optuna's default for TPE and GP).
STARTUP_TRIALS = 10
_IN_MEMORY_LOG = logging.getLogger("optuna.storages._in_memory")
ORDER = ("depth", "size", "width_pos", "lr")  # space.sample's parameters: the axes of a QMC point


def _quiet(record: logging.LogRecord) -> bool:
    return False


def draw_seed(cfg_seed: int, family: str, index: int) -> int:
    """The seed of a family's index-th draw: stable across processes, hosts and Python versions."""
    return int.from_bytes(hashlib.sha256(f"{cfg_seed}/{family}/{index}".encode()).digest()[:4], "little")


class CubePoint(BaseSampler):
    """Maps one point of the unit cube onto the parameters, by name (ORDER): a space-filling design's draw."""

    def __init__(self, point: Sequence[float]) -> None:
        self.point = dict(zip(ORDER, point, strict=True))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        u = self.point[param_name]
        d = param_distribution
        assert isinstance(d, (IntDistribution, FloatDistribution)), d  # space.sample suggests only these
        lo, hi = (d.low, d.high + 1) if isinstance(d, IntDistribution) else (d.low, d.high)
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if d.log else lo + u * (hi - lo)
        return min(d.high, int(x)) if isinstance(d, IntDistribution) else min(d.high, x)


def make_sampler(name: str, cfg_seed: int, family: str, index: int, salt: int = 0) -> BaseSampler:
    """The sampler that draws a family's index-th configuration (a fresh one per draw: no state between draws)."""
    # salt (racing claims, see pending) keeps draws of the same place by racing workers apart.
    family = f"{family}/{salt}" if salt else family
    seed = draw_seed(cfg_seed, family, index)
    if name == "tpe-mv":  # multivariate TPE: the default before bench/search_quality.py chose gp
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP_TRIALS,
                                          constant_liar=True)
    if name == "tpe":  # Optuna's TPE defaults, plus the liar (configurations drawn together differ)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "gp":  # the default: bench/RESULTS.md, "Search quality"
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":  # one scrambled Sobol sequence per (run seed, family); the draw takes its index-th point
        from scipy.stats import qmc

        sobol = qmc.Sobol(d=len(ORDER), scramble=True, seed=draw_seed(cfg_seed, family, -1))
        if index:  # scipy refuses to fast-forward by 0
            sobol.fast_forward(index)
        return CubePoint(sobol.random(1)[0])
    raise ValueError(f"unknown sampler {name!r}: one of {', '.join(SAMPLERS)}")


def fixed_in_advance(name: str) -> int | None:
    """How many draws of this sampler do not depend on results (None: all of them)."""
    return None if name in ("random", "qmc") else STARTUP_TRIALS


def origin(trial: FrozenTrial | optuna.Trial) -> int:
    """The number of the first trial of this trial's retry chain (it names the chain's checkpoint)."""
    history = trial.user_attrs.get(RETRY_ATTR, [])
    return history[0] if history else trial.number


def _brings_configuration(t: FrozenTrial) -> bool:
    """A trial that brought a new configuration: not a retry, and not closed before one was stored."""
    return not t.user_attrs.get(RETRY_ATTR) and not (t.state == TrialState.FAIL and not t.params)


def draw_index(trials: Sequence[FrozenTrial], number: int) -> int:
    """The place of trial `number`'s configuration in the family's sequence of new configurations.

    Trials still RUNNING without a configuration count (another worker is about to store one): trials
    created at the same moment never share an index, so they never draw the same configuration. Should
    the count land on a place already drawn (such a trial was closed meanwhile), the next free one is
    taken instead.
    """
    k = sum(t.number < number and _brings_configuration(t) for t in trials)
    taken = {int(t.user_attrs[DRAW_ATTR]) for t in trials
             if DRAW_ATTR in t.user_attrs and t.number != number and _brings_configuration(t)}
    return max(taken) + 1 if k in taken else k


def pending(trials: Sequence[FrozenTrial], number: int) -> int:
    """New trials numbered below `number` still RUNNING without a configuration: other workers' claims in flight.

    Never any in a serial or packed run of one process (a pack's members draw in order, and a dead
    claimer's trial on this host is closed before the next claim); with several workers it salts the
    draw, so that two workers that counted the same place (a claim between them closed meanwhile)
    still draw different configurations.
    """
    return sum(t.number < number and t.state == TrialState.RUNNING and not t.params
               and not t.user_attrs.get(RETRY_ATTR) for t in trials)


def history(trials: Sequence[FrozenTrial], index: int, batch: int = 1) -> list[FrozenTrial]:
    """What draw `index` sees: each configuration drawn before it once, in draw order, as its latest attempt.

    Configurations are drawn in batches of `batch` (the trials a pack claims together, 1 serially):
    batch b holds places b*batch .. (b+1)*batch - 1, and a draw sees the earlier places of its own
    batch as still training (RUNNING, for the constant liar), whatever they have become since, and
    the places before its batch as they stand (finished, or RUNNING while another worker trains one).
    """
    latest: dict[int, FrozenTrial] = {}
    for t in trials:
        o = origin(t)
        if t.params and (o not in latest or t.number > latest[o].number):
            latest[o] = t
    start = index - index % batch
    seen = []
    for t in trials:
        if not _brings_configuration(t) or t.number not in latest:
            continue
        # Trials from before places were recorded get theirs counted (only then: it is quadratic).
        place = int(t.user_attrs[DRAW_ATTR]) if DRAW_ATTR in t.user_attrs else draw_index(trials, t.number)
        if place >= index:
            continue
        last = latest[t.number]
        state = last.state
        if place >= start or state == TrialState.WAITING:
            state = TrialState.RUNNING
        seen.append((place, optuna.trial.create_trial(
            state=state, params=last.params, distributions=last.distributions,
            values=last.values if state == TrialState.COMPLETE else None,
            intermediate_values=last.intermediate_values)))
    return [t for _, t in sorted(seen, key=lambda pt: pt[0])]


def draw(cfg: RunConfig, family: str, index: int, seen: Sequence[FrozenTrial], d_in: int,
         d_out: int, salt: int = 0) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The index-th configuration of a family given the canonical history `seen`: (params, distributions)."""
    with warnings.catch_warnings():  # the multivariate TPE, the liar and GP are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = make_sampler(cfg.sampler, cfg.seed, family, index, salt)
        _IN_MEMORY_LOG.addFilter(_quiet)  # one "A new study created in memory" line per draw says nothing
        try:
            view = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
        finally:
            _IN_MEMORY_LOG.removeFilter(_quiet)
        view.add_trials(seen)
        trial = view.ask()
        space.sample(trial, family, cfg.budget, d_in, d_out, cfg.space, cfg.fixed_win)
    return trial.params, trial.distributions
