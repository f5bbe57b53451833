"""Running a search: the run loop, claims among workers, one TrialRun per claimed trial, executors, pruning.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

from hgsearch import lazy_exports

_HOMES = {
    "run": ["run_search", "train_single"],
    "workers": ["run_parallel"],
    "preview": ["plan"],
    "pruning": ["Pruner", "Observation", "Decision"],
    "identity": ["config_from_settings"],
}
__all__ = [name for names in _HOMES.values() for name in names]
__getattr__ = lazy_exports(__name__, _HOMES)
