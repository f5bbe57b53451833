"""Running a search: the run loop, claims among workers, one object per running trial, executors, pruning."""
