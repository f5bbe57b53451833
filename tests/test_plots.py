"""Every figure renders to PNG (decoded and checked non-blank) and SVG, with labels, legend and scale."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hgsearch.results import plots
from hgsearch.results.paper import published_front
from hgsearch.results.trials import Frontier


def frontier() -> Frontier:
    rows = []
    for fam, pts in (("hourglass", [(1.1e6, 26.0), (1.5e6, 27.0), (2.6e6, 27.4)]),
                     ("conventional", [(2.5e6, 26.6), (3.2e6, 27.3)])):
        for i, (p, v) in enumerate(pts):
            rows.append({"family": fam, "params": p, "psnr_test": v, "psnr_val": v + 0.1, "trial": i,
                         "state": "COMPLETE", "n_seeds": 3, "psnr_test_std": 0.1, "depth": i + 1, "width": 800,
                         "bottleneck": 100})
    df = pd.DataFrame(rows)
    settings = {"hourglass": {"task": "superres", "dataset": "mnist", "epochs": 50, "fixed_win": False}}
    return Frontier("plotstub", settings, df, df)


def decode(path) -> np.ndarray:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    return img[..., :3].mean(axis=2)


def non_blank(img: np.ndarray) -> None:
    assert img.std() > 0.05  # not one flat colour
    assert (img < 0.5).mean() > 0.005  # lines, markers and text were drawn


def test_frontier_figure_with_band_baseline_published_and_log_axis(tmp_path):
    fr = frontier()
    fig = plots.frontier_figure(fr, means=fr.frontier, baseline=("bicubic upsampling", 25.0),
                                published=published_front("superres"), flagged={("hourglass", 0)})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "parameters (millions)" and ax.get_ylabel() == "test PSNR (dB)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("published" in t for t in labels) and any("baseline" in t for t in labels)
    assert any("mean of 3+ seeds" in t for t in labels)
    assert ax.collections and any(c.__class__.__name__ == "FillBetweenPolyCollection" or "Poly" in
                                  c.__class__.__name__ for c in ax.collections)  # the seed band
    assert ax.get_xscale() == "linear"  # 1.1M to 4.8M: a factor of 4.4, no log scale needed
    paths = plots.save_all(fig, tmp_path / "frontier")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    non_blank(decode(paths[0]))
    assert paths[1].read_text().lstrip().startswith("<?xml")


def test_log_scale_when_the_range_calls_for_it(tmp_path):
    fr = frontier()
    wide = fr.trials.copy()
    wide.loc[0, "params"] = 5e4
    fig = plots.frontier_figure(Frontier("w", fr.settings, wide, wide))
    assert fig.axes[0].get_xscale() == "log"
    non_blank(decode(plots.save_all(fig, tmp_path / "wide", ("png",))[0]))


def test_scaling_figure(tmp_path):
    scaling = pd.DataFrame([{"family": f, "hi": hi, "depth": d, "width": w, "bottleneck": b, "ratio": b / w}
                            for f, rows in (("hourglass", [(1e6, 4, 785, 10), (2e6, 10, 785, 115),
                                                           (4e6, 10, 1470, 115)]),
                                            ("conventional", [(2e6, 1, 784, 1150), (4e6, 3, 784, 785)]))
                            for hi, d, w, b in rows])
    fig = plots.scaling_figure(scaling, "t")
    assert [ax.get_ylabel().split(" ")[0] for ax in fig.axes] == ["depth", "stream", "bottleneck", "ratio"]
    assert fig.axes[3].get_yscale() == "log"  # ratios from 0.013 to 1.47
    non_blank(decode(plots.save_all(fig, tmp_path / "scaling")[0]))


@pytest.mark.parametrize("c", [1, 3])
def test_samples_figure(tmp_path, c):
    rng = np.random.default_rng(0)
    x, y = rng.random((4, c * 6 * 6)), rng.random((4, c * 12 * 12))
    fig = plots.samples_figure(x, y * 0.9, y, (c, 6, 6), (c, 12, 12), "samples")
    assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["input", "output", "target"]
    non_blank(decode(plots.save_all(fig, tmp_path / f"samples{c}", ("png",))[0]))


IMPORT_SETTINGS_PROBE = r"""
import faulthandler, importlib, logging, os, pkgutil, signal, sys, warnings
# Third-party imports first: their own import-time settings are theirs, not ours.
import matplotlib, numpy, optuna, pandas, rich, sqlalchemy, torch, typer
import hgsearch

optuna.logging.set_verbosity(optuna.logging.DEBUG)  # a notebook's own choice, which hgsearch must keep


def settings():
    loggers = {name: (lg.level, lg.disabled, lg.propagate, len(lg.handlers), len(lg.filters))
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    loggers["<root>"] = (logging.root.level, len(logging.root.handlers))
    signals = {s.name: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    return {
        "loggers": loggers, "logging.disable": logging.root.manager.disable, "optuna": optuna.logging.get_verbosity(),
        "warnings": list(warnings.filters), "backend": dict.__getitem__(matplotlib.rcParams, "backend"),
        "rcParams": {k: str(dict.__getitem__(matplotlib.rcParams, k)) for k in matplotlib.rcParams},  # raw: no
        # backend resolution by the reading itself
        "torch threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "torch": (torch.get_default_dtype(), torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled(),
                  torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark),
        "numpy": (numpy.geterr(), numpy.get_printoptions()), "pandas": str(pandas.options.display.__dict__),
        "signals": signals, "environ": dict(os.environ), "cwd": os.getcwd(), "recursion": sys.getrecursionlimit(),
        "hooks": (sys.excepthook, sys.displayhook, faulthandler.is_enabled()),
    }


before = settings()
names = [m.name for m in pkgutil.walk_packages(hgsearch.__path__, "hgsearch.") if m.name != "hgsearch.__main__"]
for name in names:
    importlib.import_module(name)
after = settings()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
# A logger that a module creates at import may appear, but only at its default (unset) level.
new = {n: v for n, v in after["loggers"].items() if n not in before["loggers"]}
for n, v in new.items():
    assert v == (logging.NOTSET, False, True, 0, 0), ("logger set at import", n, v)
if "loggers" in changed:
    old = {n: v for n, v in before["loggers"].items() if after["loggers"].get(n) != v}
    assert not old, ("logger changed at import", {n: (v, after["loggers"].get(n)) for n, v in old.items()})
    del changed["loggers"]
assert not changed, changed
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported: it picks a backend and keeps global figures"
print(len(names))
"""


@pytest.mark.slow
def test_importing_the_library_changes_no_process_settings():
    """A notebook that imports any part of hgsearch keeps its logging, warning filters, matplotlib backend,
    torch threads and the rest: every module is imported (pkgutil walks the package) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", IMPORT_SETTINGS_PROBE], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) >= 50, "the walk found too few modules to mean anything"  # 60 at this writing
