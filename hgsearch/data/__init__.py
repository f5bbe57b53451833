"""Image data: registry, file formats, verified downloads, tasks; no re-exports: they would load torch."""
