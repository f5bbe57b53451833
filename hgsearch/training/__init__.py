"""Training models: the plain loop, packs of trials trained together, checkpoints, weights files, baselines.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

from hgsearch import lazy_exports

_HOMES = {
    "loop": ["train", "evaluate", "TrainResult"],
    "packed": ["train_packed"],
    "record": ["TrialRecord", "save_weights", "load_weights"],
    "baselines": ["Baseline", "baseline"],
}
__all__ = [name for names in _HOMES.values() for name in names]
__getattr__ = lazy_exports(__name__, _HOMES)
