"""Figures; the only module that imports matplotlib (headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from hgsearch.frontier import Frontier, atomic_write  # noqa: E402

STYLE = {"hourglass": {"color": "tab:blue", "marker": "o"}, "conventional": {"color": "tab:orange", "marker": "s"}}


def plot_frontier(fr: Frontier, path: str | Path) -> Path:
    """Both families' frontiers overlaid: x = parameters (millions), y = test PSNR (dB)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=150)
    for fam, style in STYLE.items():
        pts = fr.trials[(fr.trials["family"] == fam) & (fr.trials["state"] == "COMPLETE")]
        if pts.empty:
            continue
        ax.scatter(pts["params"] / 1e6, pts["psnr"], s=12, alpha=0.25, color=style["color"])
        f = fr.family(fam)
        ax.plot(f["params"] / 1e6, f["psnr"], drawstyle="steps-post", label=f"{fam} frontier ({len(f)})", **style)
    s = next(iter(fr.settings.values()), {})
    win = "fixed W_in (counted)" if s.get("fixed_win") else "trained W_in"
    ax.set_title(f"{fr.study}: {s.get('task', '?')} on {s.get('dataset', '?')}, {s.get('epochs', '?')} epochs, {win}",
                 fontsize=9)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda p: fig.savefig(p, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return out
