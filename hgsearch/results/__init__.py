"""Results of a study: trials tables, frontier statistics, seed retraining, curves, figures and the report.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

from hgsearch import lazy_exports

_HOMES = {
    "analysis": ["Analysis", "analyze", "summary", "write_outputs"],
    "stats": ["Comparison", "compare", "hypervolume", "means_frontier", "pareto_front"],
    "trials": ["Frontier", "load_frontier", "study_state", "write_tables"],
    "confirm": ["confirm_seeds"],
    "curves": ["load_curves"],
    "report": ["write_report"],
    "settledness": ["Settledness", "hypervolume_curve"],
}
__all__ = [name for names in _HOMES.values() for name in names]
__getattr__ = lazy_exports(__name__, _HOMES)
