"""A study's report: one self-contained offline HTML page with every figure, table and sample grid."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hgsearch.errors import StorageError
from hgsearch.results.analysis import (
    CURVES_TITLE,
    HYPERVOLUME_TITLE,
    Analysis,
    figure_kw,
    frontier_trials,
    study_config,
)
from hgsearch.results.confirm import frontier_model
from hgsearch.results.curves import load_curves
from hgsearch.results.plots import curves_figure, hypervolume_figure
from hgsearch.results.stats import json_ready
from hgsearch.results.tables import comparison_view, front_view, scaling_view, settled_view
from hgsearch.results.trials import package_versions
from hgsearch.store.atomic import atomic_write
from hgsearch.training.loop import as_float

N_SAMPLES = 8  # test images per sample grid, evenly spaced over the test split (fixed, not random)


def sample_grids(an: Analysis, study_dir: str | Path) -> list[tuple[pd.Series, Any, dict[str, Any]]]:
    """Per frontier point, (row, figure, provenance) of input/output/target on fixed test images."""
    from hgsearch.results import plots

    data = an.data
    if data is None:
        return []
    cfg = study_config(an.fr, device=str(data.test.inputs.device))
    idx = torch.from_numpy(np.linspace(0, len(data.test) - 1, N_SAMPLES).astype(np.int64)).to(data.test.inputs.device)
    x, y = as_float(data.test.inputs[idx]), as_float(data.test.targets[idx])
    c, h, w = data.image_shape
    in_shape = (c, h // 2, w // 2) if data.task == "superres" else (c, h, w)
    out = []
    for _, row in an.front.iterrows():
        model, info = frontier_model(row, data, cfg, study_dir)
        with torch.no_grad():
            pred = model(x)
        title = (f"{row['family']} #{int(row['trial'])}: {int(row['params']):,} params, depth {int(row['depth'])}, "
                 f"width {int(row['width'])}, d_h {int(row['bottleneck'])}, test {row['psnr_test']:.2f} dB")
        fig = plots.samples_figure(x.cpu().numpy(), pred.cpu().numpy(), y.cpu().numpy(), in_shape, (c, h, w), title)
        out.append((row, fig, info))
    return out


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png_b64(fig)}">'


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.warn{color:#b00}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"""


def render_html(an: Analysis, study_dir: str | Path, *, samples: bool = True) -> str:
    """The report as one HTML string: images inline as base64 PNG, no external reference at all."""
    from hgsearch.results import plots

    s, e = an.settings, html.escape
    parts = [f"<h1>hgsearch report: {e(an.fr.study)}</h1>",
             f"<p>{e(str(s.get('task')))} on {e(str(s.get('dataset')))}, budget {int(s['budget']):,} parameters, "
             f"{e(str(s.get('epochs')))} epochs per trial, {'fixed' if s.get('fixed_win') else 'trained'} W_in, "
             f"{an.seeds} seed(s) per frontier point. Frontier points are chosen on validation PSNR; test PSNR is "
             f"reported only.</p>"]
    if an.baseline:
        parts.append(f"<p>Trivial baseline ({e(an.baseline.method)}): validation {an.baseline.psnr_val:.2f} dB, "
                     f"test {an.baseline.psnr_test:.2f} dB.</p>")
    else:
        parts.append(f"<p class=warn>{e(an.baseline_note or 'no baseline')}</p>")
    if an.flagged:
        parts.append(f"<p class=warn>{len(an.flagged)} frontier point(s) do not beat the baseline: "
                     f"they learned nothing.</p>")
    parts += ["<h2>Frontiers</h2>", _img(plots.frontier_figure(an.fr, **figure_kw(an)), "frontier plot"),
              _table(front_view(an))]
    parts.append("<h2>Comparison</h2>")
    if an.comparison:
        head, bins = comparison_view(an.comparison)
        parts += [_table(head), "<h3>PSNR gap per budget (validation, best model within the budget)</h3>",
                  _table(bins)]
    else:
        parts.append("<p>Only one family has finished trials: nothing to compare.</p>")
    st = an.settled
    parts += ["<h2>Is the answer settled?</h2>",
              _img(hypervolume_figure(st.curve, st.reference, HYPERVOLUME_TITLE), "hypervolume vs finished trials"),
              _table(settled_view(st)),
              f"<p{'' if st.settled else ' class=warn'}>{e(st.headline())}</p>"]
    parts += ["<h2>Scaling pattern</h2>", _table(scaling_view(an.scaling)),
              _img(plots.scaling_figure(an.scaling, "best configuration per budget"), "scaling plot")]
    lines = load_curves(an.fr.study, an.storage)
    if len(lines):
        stopped = lines.loc[lines["state"] == "PRUNED", ["family", "trial"]].drop_duplicates()
        parts += ["<h2>Learning curves</h2>", _img(curves_figure(lines, frontier_trials(an), CURVES_TITLE),
                                                   "learning curves"),
                  f"<p>{len(stopped)} trial(s) stopped early by the pruner (faint, dashed); validation PSNR on the "
                  f"fixed per-epoch subset.</p>"]
    if samples:
        parts.append("<h2>Samples (fixed test images)</h2>")
        grids = sample_grids(an, study_dir)
        if not grids:
            parts.append(f"<p class=warn>no samples: {e(an.baseline_note or 'data unavailable')}</p>")
        for row, fig, info in grids:
            parts.append(_img(fig, f"{row['family']} trial {int(row['trial'])}"))
            own = "?" if info["psnr_val"] is None else f"{info['psnr_val']:.2f}"
            mean = f", mean of {int(row['n_seeds'])} seeds" if row["n_seeds"] > 1 else ""
            parts.append(f"<p>weights {e(info['source'])}; validation PSNR of this model {own} dB "
                         f"(seed {int(row['seed'])}); frontier value {row['psnr_val']:.2f} dB{mean}.</p>")
    provenance = json_ready({"settings": an.fr.settings, "versions": package_versions()})
    parts += ["<h2>Settings and versions</h2>", f"<pre>{e(json.dumps(provenance, indent=2))}</pre>"]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{e(an.fr.study)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(an: Analysis, study_dir: str | Path, *, samples: bool = True) -> Path:
    """results/<study>/report.html, written atomically."""
    path = Path(study_dir) / "report.html"
    text = render_html(an, study_dir, samples=samples)
    try:
        atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    except OSError as e:
        raise StorageError(f"cannot write {path} ({e.strerror}): pass a writable --results-dir") from None
    return path
