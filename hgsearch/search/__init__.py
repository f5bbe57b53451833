"""Running a search: run loop, claims, trial runs, executors, pruning; no re-exports: they would load torch."""
