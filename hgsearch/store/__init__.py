"""Study storage: opening Optuna storages through the retrying wrapper, finding and opening studies, the
attribute schema, the Optuna seam and atomic files.

Public: the names below (each imported from its module on first use, see hgsearch.lazy_exports).
"""

from __future__ import annotations

import logging

from hgsearch import lazy_exports

_HOMES = {
    "storage": ["make_storage", "safe_url"],
    "studies": ["StudyInfo", "find_study", "list_studies", "open_study", "study_names"],
    "atomic": ["atomic_open", "atomic_write"],
}
__all__ = [*(name for names in _HOMES.values() for name in names), "quiet_optuna_rdb_logger"]
__getattr__ = lazy_exports(__name__, _HOMES)

RDB_LOGGER = "optuna.storages._rdb.storage"


def quiet_optuna_rdb_logger() -> None:
    """Raise Optuna's RDB storage logger to ERROR: for the command line's entry point, never at import.

    RDBStorage logs a warning when a read fails with OperationalError (then tries a slower query); on a
    dropped connection that is noise on the terminal, and the retrying storage's outage note says what
    happened. A notebook that imports hgsearch keeps its own logging. Defined here, not in
    store.resilient, so that calling it loads neither Optuna nor SQLAlchemy.
    """
    logging.getLogger(RDB_LOGGER).setLevel(logging.ERROR)
