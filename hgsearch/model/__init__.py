"""The two MLP families (shapes, counts, build) and the search space; no re-exports: they would load torch."""
