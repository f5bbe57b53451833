"""Study storage: opening Optuna storages through the retrying wrapper, the Optuna seam, atomic files."""
