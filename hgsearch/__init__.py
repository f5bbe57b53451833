"""hgsearch: budgeted Pareto search over Hourglass and conventional residual MLP shapes."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, homes: dict[str, list[str]]) -> Callable[[str], Any]:
    """A subpackage's module __getattr__ that imports a public name's home module on first use.

    `from hgsearch.store import make_storage` works, yet importing one module of a subpackage does
    not load its siblings (hgsearch.store.atomic needs neither Optuna nor SQLAlchemy, the search
    never loads pandas through results/), and no __init__ ties the layers into an import cycle.
    """
    where = {name: f"{package}.{module}" for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(where[name]), name)

    return __getattr__
