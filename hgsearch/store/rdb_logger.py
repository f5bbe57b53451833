"""Quieting Optuna's RDB storage logger for the command line, without importing Optuna or SQLAlchemy."""

from __future__ import annotations

import logging

RDB_LOGGER = "optuna.storages._rdb.storage"


def quiet_optuna_rdb_logger() -> None:
    """Raise Optuna's RDB storage logger to ERROR: for the command line's entry point, never at import.

    RDBStorage logs a warning when a read fails with OperationalError (then tries a slower query); on a
    dropped connection that is noise on the terminal, and the retrying storage's outage note says what
    happened. A notebook that imports hgsearch keeps its own logging. A module of its own, not part of
    store.resilient, so that the CLI's startup and a spawned worker call it before loading Optuna.
    """
    logging.getLogger(RDB_LOGGER).setLevel(logging.ERROR)
