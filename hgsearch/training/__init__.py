"""Training models: the plain loop, packs of trials trained together, checkpoints and weights files."""
