"""The published MNIST frontiers (Chen et al. 2025, arXiv 2510.01796) as data, for overlays."""

from __future__ import annotations

import pandas as pd

from hgsearch.errors import UsageError
from hgsearch.model.families import param_count

# task -> family -> [(params in millions as published, test PSNR dB, (width, d_h, L))].
# Trained W_in; generative classification averages 5 seeds, super-resolution as published.
FRONTIERS: dict[str, dict[str, list[tuple[float, float, tuple[int, int, int]]]]] = {
    "classify": {
        "hourglass": [
            (1.294, 25.62, (785, 4, 10)),
            (1.953, 31.85, (785, 115, 4)),
            (2.926, 32.42, (785, 270, 4)),
            (3.774, 32.70, (785, 270, 6)),
            (4.528, 32.83, (785, 350, 6)),
            (6.219, 32.86, (1150, 480, 4)),
        ],
        "conventional": [
            (2.460, 25.26, (784, 785, 1)),
            (3.691, 30.91, (784, 785, 2)),
            (4.922, 32.28, (784, 785, 3)),
            (6.153, 32.64, (784, 785, 4)),
            (7.384, 33.06, (784, 785, 5)),
        ],
    },
    "superres": {
        "hourglass": [
            (1.130, 26.43, (785, 115, 2)),
            (1.492, 27.01, (785, 115, 4)),
            (2.575, 27.40, (785, 115, 10)),
            (4.822, 27.42, (1470, 115, 10)),
        ],
        "conventional": [
            (2.572, 26.65, (784, 1150, 1)),
            (3.230, 27.30, (784, 785, 2)),
            (4.461, 27.36, (784, 785, 3)),
        ],
    },
}

D_IN = {"classify": 784, "superres": 196}  # 14x14 input for x2 SR
D_OUT = 784


def published_front(task: str) -> pd.DataFrame:
    """One row per published point: family, params (exact, from the closed form), psnr_test, shape."""
    if task not in FRONTIERS:
        raise UsageError(f"no published frontier for {task!r}: use one of {', '.join(FRONTIERS)}")
    rows = []
    for family, points in FRONTIERS[task].items():
        for millions, psnr, (width, d_h, depth) in points:
            # The published millions are this exact count rounded.
            params = param_count(D_IN[task], D_OUT, width, d_h, depth)
            rows.append({
                "family": family, "params": params, "params_published_m": millions, "psnr_test": psnr,
                "width": width, "bottleneck": d_h, "depth": depth,
            })
    return pd.DataFrame(rows)
