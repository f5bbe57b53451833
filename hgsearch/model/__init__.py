"""The two MLP families (shapes, closed-form parameter counts, modules) and the search space over them.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

from hgsearch import lazy_exports

_HOMES = {
    "families": ["ArchSpec", "build", "count_module_params", "param_count"],
    "space": ["sample", "smallest"],
}
__all__ = [name for names in _HOMES.values() for name in names]
__getattr__ = lazy_exports(__name__, _HOMES)
