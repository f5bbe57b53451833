"""Study storage, its attribute schema, atomic files; re-exports only the Optuna-free quiet_optuna_rdb_logger."""

from hgsearch.store.rdb_logger import quiet_optuna_rdb_logger

__all__ = ["quiet_optuna_rdb_logger"]
