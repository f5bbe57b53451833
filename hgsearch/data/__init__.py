"""Image data: the dataset registry, file formats, verified downloads and the three tasks built on them.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

from hgsearch import lazy_exports

_HOMES = {
    "registry": ["Dataset", "load_dataset"],
    "tasks": ["Split", "TaskData", "load_task"],
}
__all__ = [name for names in _HOMES.values() for name in names]
__getattr__ = lazy_exports(__name__, _HOMES)
