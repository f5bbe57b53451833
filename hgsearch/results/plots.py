"""Figures, drawn with matplotlib's object-oriented API on an Agg canvas.

No pyplot: a Figure bound to its own FigureCanvasAgg renders headless without selecting a backend,
so importing this module changes nothing for a notebook or an application that uses matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hgsearch.names import FAMILIES
from hgsearch.results.trials import Frontier
from hgsearch.store.atomic import atomic_write

STYLE = {"hourglass": {"color": "tab:blue", "marker": "o"}, "conventional": {"color": "tab:orange", "marker": "s"}}
FORMATS = ("png", "svg")  # PNG for screens and the report, SVG for papers
LOG_X_SPAN = 8.0  # a parameter axis spanning more than this factor is drawn on a log scale


def _figure(figsize: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas: nothing is registered with pyplot, so nothing needs closing."""
    fig = Figure(figsize=figsize, dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix.lstrip(".") or "png"))
    return path


def save_all(fig: Figure, stem: str | Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the figure as stem.png and stem.svg (atomically)."""
    return [_save(fig, Path(f"{stem}.{fmt}")) for fmt in formats]


def _title(fr: Frontier) -> str:
    s = next(iter(fr.settings.values()), {})
    win = "fixed W_in (counted)" if s.get("fixed_win") else "trained W_in"
    epochs = s.get("epochs", "?")
    plural = "" if epochs == 1 else "s"
    return f"{fr.study}: {s.get('task', '?')} on {s.get('dataset', '?')}, {epochs} epoch{plural}, {win}"


def _params_axis(ax, values) -> None:
    v = np.asarray([x for x in values if x and x > 0], float)
    if len(v) and v.max() / v.min() > LOG_X_SPAN:
        ax.set_xscale("log")
    ax.set_xlabel("parameters (millions)")


def frontier_figure(
    fr: Frontier,
    *,
    means: pd.DataFrame | None = None,
    baseline: tuple[str, float] | None = None,
    published: pd.DataFrame | None = None,
    flagged: set[tuple[str, int]] | None = None,
) -> Figure:
    """Both families' frontiers: x = parameters (millions), y = test PSNR (dB) of the points chosen on
    validation PSNR. means (the means frontier of results.stats, with psnr_test_std and n_seeds) replaces
    the Pareto set (fr.frontier) and adds a +-1 std band; baseline = (label, test dB) is a horizontal
    line; published adds the paper's MNIST frontiers, dashed."""
    fig = _figure((6.4, 4.4))
    ax = fig.subplots()
    xs = []
    for fam, style in STYLE.items():
        pts = fr.trials[(fr.trials["family"] == fam) & (fr.trials["state"] == "COMPLETE")]
        if pts.empty:
            continue
        ax.scatter(pts["params"] / 1e6, pts["psnr_test"], s=12, alpha=0.25, color=style["color"],
                   label=f"{fam} trials ({len(pts)})")
        xs += list(pts["params"] / 1e6)
        f = fr.family(fam) if means is None else means[means["family"] == fam]
        if f.empty:
            continue
        x, y = f["params"].to_numpy(float) / 1e6, f["psnr_test"].to_numpy(float)
        k = int(f["n_seeds"].min()) if means is not None else 1
        label = f"{fam} frontier ({len(f)} pts" + (f", mean of {k}+ seeds)" if k > 1 else ")")
        ax.plot(x, y, drawstyle="steps-post", label=label, **style)
        if means is not None and k > 1:
            sd = f["psnr_test_std"].fillna(0).to_numpy(float)
            ax.fill_between(x, y - sd, y + sd, step="post", color=style["color"], alpha=0.2, linewidth=0)
        for _, r in f.iterrows():
            if flagged and (fam, int(r["trial"])) in flagged:
                ax.annotate("learned nothing", (r["params"] / 1e6, r["psnr_test"]), fontsize=6, color="red")
    if published is not None and len(published):
        for fam, part in published.groupby("family"):
            ax.plot(part["params"] / 1e6, part["psnr_test"], linestyle="--", marker=STYLE[fam]["marker"], markersize=3,
                    color=STYLE[fam]["color"], alpha=0.6, drawstyle="steps-post",
                    label=f"{fam}, published (Chen et al. 2025)")
            xs += list(part["params"] / 1e6)
    if baseline is not None:
        ax.axhline(baseline[1], color="gray", linestyle=":", linewidth=1.2,
                   label=f"baseline: {baseline[0]} ({baseline[1]:.2f} dB)")
    ax.set_title(_title(fr), fontsize=9)
    _params_axis(ax, xs)
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def scaling_figure(scaling: pd.DataFrame, title: str = "") -> Figure:
    """Per budget bin, the best configuration's depth, width, bottleneck and ratio, one line per family."""
    fig = _figure((7.2, 5.2))
    axes = fig.subplots(2, 2, sharex=True)
    panels = [("depth", "depth L (blocks)"), ("width", "stream width d_z or d_x (units)"),
              ("bottleneck", "bottleneck d_h (units)"), ("ratio", "ratio d_h / d_z")]
    for ax, (col, label) in zip(axes.flat, panels, strict=True):
        for fam, part in scaling.groupby("family"):
            ax.plot(part["hi"] / 1e6, part[col], label=fam, **STYLE.get(fam, {}))
        ax.set_ylabel(label, fontsize=8)
        if col == "ratio" and len(scaling) and scaling["ratio"].max() / max(scaling["ratio"].min(), 1e-12) > 10:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3, which="both")
    for ax in axes[1]:
        _params_axis(ax, list(scaling["hi"] / 1e6) if len(scaling) else [])
        ax.set_xlabel("budget: bin top (millions of parameters)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or "best configuration per budget", fontsize=9)
    fig.tight_layout()
    return fig


def hypervolume_figure(curve: pd.DataFrame, reference: tuple[float, float], title: str = "") -> Figure:
    """Each family's hypervolume against its finished trials (results.settledness.hypervolume_curve): a line
    still climbing at its end says more trials would likely move the frontier."""
    fig = _figure((6.4, 4.0))
    ax = fig.subplots()
    for fam, style in STYLE.items():
        part = curve[curve["family"] == fam]
        if part.empty:
            continue
        ax.plot(part["finished"], part["hypervolume"], drawstyle="steps-post", color=style["color"],
                label=f"{fam} ({len(part)} finished trials)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted, never fractional
    ax.set_xlabel("finished trials (in the order they finished; stopped early ones included)")
    ax.set_ylabel("hypervolume (dB x M params)")
    ax.set_title(title or "hypervolume as trials finished", fontsize=9)
    ax.text(0.99, 0.02, f"reference: {reference[0] / 1e6:.3g}M params, {reference[1]:.2f} dB", fontsize=7,
            ha="right", va="bottom", transform=ax.transAxes, color="gray")
    ax.grid(True, alpha=0.3)
    if len(curve):
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def _image(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    img = np.clip(flat.reshape(c, h, w), 0, 1)
    return img[0] if c == 1 else img.transpose(1, 2, 0)


def samples_figure(inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray,
                   in_shape: tuple[int, int, int], out_shape: tuple[int, int, int], title: str) -> Figure:
    """Rows input / output / target for a few fixed test images (flattened, values in [0, 1])."""
    n = len(inputs)
    fig = _figure((1.1 * n + 0.9, 3.7))
    axes = fig.subplots(3, n, squeeze=False)
    for row, (name, arr, shape) in enumerate((("input", inputs, in_shape), ("output", outputs, out_shape),
                                               ("target", targets, out_shape))):
        for j in range(n):
            ax = axes[row, j]
            ax.imshow(_image(arr[j], shape), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, highlight: Mapping[str, set[int]] | None = None,
                  title: str = "") -> Figure:
    """Validation PSNR against epoch, one panel per family: finished trials solid, stopped ones
    faint, highlighted trials (e.g. each family's frontier) thick."""
    families = [f for f in FAMILIES if (curves["family"] == f).any()] or list(FAMILIES[:1])
    fig = Figure(figsize=(5.0 * len(families), 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas, so fig.savefig works without pyplot
    axes = fig.subplots(1, len(families), squeeze=False, sharey=True)[0]
    for ax, fam in zip(axes, families, strict=True):
        marked = (highlight or {}).get(fam, set())
        for (trial, state), g in curves[curves["family"] == fam].groupby(["trial", "state"], sort=True):
            style: dict[str, Any] = {"color": STYLE[fam]["color"], "linewidth": 1.0, "alpha": 0.7}
            if state == "PRUNED":  # stopped early by the pruner
                style.update(alpha=0.2, linestyle="--")
            if trial in marked:
                style.update(linewidth=2.5, alpha=1.0)
            ax.plot(g["epoch"], g["psnr_val_epoch"], marker="." if len(g) < 30 else None, **style)
        ax.set_title(f"{fam} ({curves.loc[curves['family'] == fam, 'trial'].nunique()} trials)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation PSNR after the epoch (dB)")
    if title:
        fig.suptitle(title)
    return fig
