"""The search's per-epoch hook: store each trial's learning curve, then let the pruner stop it at a rung.

The curve goes to the trial's user attributes after every epoch (search.curves); a trial that trains
all its epochs also gets it as Optuna intermediate values at its last epoch, for optuna-dashboard
(only then: see search.curves for why a trial that may still be PRUNED must not carry them).

Order at each epoch end (TrialRun.epoch_end calls this before writing the epoch's checkpoint): the curve
is written to the trial, the pruner decides from what the storage holds (so every worker and host
decides alike), and only a trial that continues gets its checkpoint. A kill anywhere in between
resumes from the previous checkpoint, retrains that epoch (resume is exact) and decides again, so a
rung decision is never skipped; a stop is acted on only through the final PRUNED state.
"""

from __future__ import annotations

from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.search import curves
from hgsearch.search.pruning import Observation, Pruner
from hgsearch.search.trial import EpochHook, TrialRun
from hgsearch.store import optuna_seam as seam
from hgsearch.store import schema

PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def pruner_for(cfg: RunConfig) -> Pruner:
    """The run's stopping rule from its settings (rule "none" has no rungs: it stops nothing)."""
    return Pruner(cfg.pruning, cfg.min_epochs, cfg.reduction_factor, cfg.epochs, cfg.prune_margin,
                  cfg.prune_min_peers)


class CurveHook:
    """on_epoch for trial.run_trials: records curves always, stops trials only under a pruning rule."""

    def __init__(self, cfg: RunConfig) -> None:
        self.pruner = pruner_for(cfg)
        self.curves: dict[int, tuple[list[float], list[float]]] = {}  # by trial number, this process only

    def _curve(self, c: TrialRun) -> tuple[list[float], list[float]]:
        """The trial's curve so far: empty, or on a retry its chain's curve up to the checkpoint (TrialRun.begin)."""
        number = c.trial.number
        if number not in self.curves:
            self.curves[number] = (list(c.carried[0]), list(c.carried[1]))
        return self.curves[number]

    def __call__(self, c: TrialRun, epoch: int, metrics: dict[str, float]) -> bool:
        if "psnr_val_epoch" not in metrics:  # an executor without per-epoch evaluation
            return True
        curve, secs = self._curve(c)
        del curve[epoch - 1:], secs[epoch - 1:]  # the epoch retrained after a resume replaces its entry
        curve.append(float(metrics["psnr_val_epoch"]))
        secs.append(float(metrics["seconds"]))
        for key, value in curves.curve_attrs(curve, secs).items():
            c.trial.set_user_attr(key, value)
        if epoch == c.record.epochs:  # never a rung (rungs lie below --epochs): this trial will be COMPLETE
            seam.set_intermediate_values(c.trial, curve)
            self.curves.pop(c.trial.number, None)
        if epoch not in self.pruner.rungs:
            return True
        # A FAIL trial is either broken or cut off and retried (its retry carries its curve on): no peer.
        recorded = [o for t in c.search.study.get_trials(deepcopy=False, states=PEER_STATES)
                    if (o := curves.observation(c.search.family, t)) is not None]
        me = Observation(c.search.family, c.trial.number, c.record.params, tuple(curve))
        decision = self.pruner.decide(me, epoch, recorded)
        if not decision.stop:
            return True
        c.trial.set_user_attr(schema.REASON_ATTR, decision.reason)  # trials.csv and the displays show it from there
        self.curves.pop(c.trial.number, None)
        return False


def hook_for(cfg: RunConfig) -> EpochHook:
    return CurveHook(cfg)
