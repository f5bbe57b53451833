"""Training: plain loop, packs, checkpoints, weights files, baselines; no re-exports: they would load torch."""
