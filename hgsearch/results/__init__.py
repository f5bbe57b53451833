"""A study's results: tables, statistics, seeds, curves, figures, report; no re-exports: they would load pandas."""
