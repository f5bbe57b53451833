"""A study's comparison: summary.json, figures and one self-contained offline HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hgsearch.analysis import Comparison, compare, scaling_pattern
from hgsearch.atomic import atomic_write
from hgsearch.baselines import Baseline, baseline
from hgsearch.confirm import frontier_model, load_checked_task, means_front, study_config
from hgsearch.curves import curves_figure, load_curves, write_curves
from hgsearch.errors import DataError, StorageError
from hgsearch.frontier import (Frontier, load_frontier, load_seed_rows, package_versions, seed_rows,
                               write_tables)
from hgsearch.storage import DIRECTIONS, METRIC_NAMES, safe_url
from hgsearch.tasks import TaskData
from hgsearch.train import as_float

N_BINS = 6
N_SAMPLES = 8  # test images per sample grid, evenly spaced over the test split (fixed, not random)


@dataclass
class Analysis:
    """Everything `frontier` prints and `report` shows about one study."""

    fr: Frontier
    storage: str
    settings: dict[str, Any]  # the study's stored settings (hourglass's, else conventional's)
    rows: pd.DataFrame  # finished runs, one per (configuration, seed): search trials + confirm's seeds
    front: pd.DataFrame  # the paper's frontier on seed means (psnr_test = mean test PSNR, psnr_test_std, n_seeds)
    comparison: Comparison | None  # None when only one family has finished trials
    scaling: pd.DataFrame
    baseline: Baseline | None
    baseline_note: str | None  # why there is no baseline (dataset not found here)
    data: TaskData | None

    @property
    def seeds(self) -> int:
        """Fewest seeds behind any frontier point (1 until `hgsearch confirm` ran)."""
        return int(self.front["n_seeds"].min()) if len(self.front) else 0

    @property
    def flagged(self) -> set[tuple[str, int]]:
        """(family, trial) of frontier points no better than the trivial baseline: they learned nothing."""
        if self.baseline is None:
            return set()
        bad = self.front[self.front["psnr_val"] <= self.baseline.psnr_val]
        return {(r["family"], int(r["trial"])) for _, r in bad.iterrows()}


def analyze(study: str, storage: str, *, data_dir: str | None = None, device: str = "auto",
            load_data: bool = True, n_bins: int = N_BINS) -> Analysis:
    """Load a study (and confirm's seeds), compute baselines, the comparison and the scaling pattern.

    The data is needed only for the baselines (and the report's pictures); when it cannot be found
    here, the comparison is still made and summary.json says why the baseline is missing.
    """
    fr = load_frontier(study, storage)
    settings = fr.settings.get("hourglass") or next(iter(fr.settings.values()))
    seeds = load_seed_rows(study, storage)
    rows = seed_rows(fr, seeds)
    front = means_front(fr, seeds)
    data, base, note = None, None, None
    if load_data:
        try:
            data = load_checked_task(fr, study_config(fr, data_dir=data_dir, device=device))
            base = baseline(data)
        except DataError as e:
            note = f"no baseline: {e}"
    budget = float(settings["budget"])
    families = set(rows["family"])
    comp = None
    if {"hourglass", "conventional"} <= families:
        comp = compare(rows, budget, baseline_psnr=base.psnr_val if base else None, n_bins=n_bins)
    return Analysis(fr, storage, settings, rows, front, comp, scaling_pattern(rows, budget, n_bins), base,
                    note, data)


def published(an: Analysis) -> pd.DataFrame | None:
    """The paper's MNIST frontier for this task, when the study is that experiment (MNIST, same sizes)."""
    from hgsearch.paper import D_IN, D_OUT, FRONTIERS, published_front

    s = an.settings
    if (s.get("dataset") != "mnist" or s.get("task") not in FRONTIERS or s.get("fixed_win")
            or s.get("d_in") != D_IN[s["task"]] or s.get("d_out") != D_OUT):
        return None
    return published_front(s["task"])


def _front_records(an: Analysis) -> list[dict[str, Any]]:
    keep = ["family", "params", "trainable_params", "depth", "width", "bottleneck", "lr", "psnr_val",
            "psnr_val_std", "psnr_test", "psnr_test_std", "n_seeds", "trial", "seed"]
    flagged = an.flagged
    out = []
    for rec in an.front[keep].to_dict("records"):
        rec["learned_nothing"] = (rec["family"], int(rec["trial"])) in flagged
        out.append(rec)
    return out


def summary(an: Analysis) -> dict[str, Any]:
    """summary.json: what was compared, how, on which data and software, and the answer."""
    s = an.settings
    comp = an.comparison.to_dict() if an.comparison else None
    return _json_ready({
        "study": an.fr.study,
        "storage": safe_url(an.storage),
        "objectives": dict(zip(METRIC_NAMES, DIRECTIONS)),
        "selection": "frontier points chosen on validation PSNR (mean over seeds, best lr per shape); "
                     "test PSNR reported only",
        "budget": s.get("budget"),
        "reference_point": comp["reference"] if comp else None,
        "task": s.get("task"),
        "dataset": {"name": s.get("dataset"), "checksum": s.get("dataset_checksum")},
        "protocol": s.get("protocol"),
        "settings": an.fr.settings,
        "versions": package_versions(),
        "seeds_per_point": an.seeds,
        "comparison": comp,
        "comparison_note": None if comp else "only one family has finished trials: nothing to compare",
        "baseline": an.baseline.to_dict() if an.baseline else None,
        "baseline_note": an.baseline_note,
        "frontier": _front_records(an),
        "scaling_pattern": an.scaling.to_dict("records"),
    })


def _json_ready(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_ready(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    return v


def _figure_kw(an: Analysis) -> dict[str, Any]:
    base = (an.baseline.method.split(" of ")[0].split(" (")[0], an.baseline.psnr_test) if an.baseline else None
    return {"means": an.front, "baseline": base, "published": published(an), "flagged": an.flagged}


_CURVES_TITLE = "validation PSNR per epoch (frontier trials thick, stopped trials faint)"


def frontier_trials(an: Analysis) -> dict[str, set[int]]:
    """Each family's frontier trial numbers, the curves a learning-curve figure draws thick."""
    return {fam: {int(t) for t in g["trial"]} for fam, g in an.fr.frontier.groupby("family")}


def write_outputs(an: Analysis, out_dir: str | Path, *, plot: bool = False) -> list[Path]:
    """frontier.csv, trials.csv, curves.csv, summary.json (+ frontier_means.csv with seeds; + figures with plot)."""
    out = Path(out_dir)
    paths = write_tables(an.fr, out, an.baseline.psnr_val if an.baseline else None)
    lines = load_curves(an.fr.study, an.storage)
    paths.append(write_curves(lines, out))
    try:
        text = json.dumps(summary(an), indent=2)
        paths.append(out / "summary.json")
        atomic_write(paths[-1], lambda p: Path(p).write_text(text + "\n"))
        if an.seeds > 1:
            paths.append(out / "frontier_means.csv")
            atomic_write(paths[-1], lambda p: an.front.to_csv(p, index=False))
        if plot:
            from hgsearch import plots

            paths += plots.save_all(plots.frontier_figure(an.fr, **_figure_kw(an)), out / "frontier")
            paths += plots.save_all(plots.scaling_figure(an.scaling, f"{an.fr.study}: best shape per budget"),
                                    out / "scaling")
            paths += plots.save_all(curves_figure(lines, frontier_trials(an), _CURVES_TITLE), out / "curves")
    except OSError as e:
        raise StorageError(f"cannot write to {out} ({e.strerror}): pass a writable --results-dir") from None
    return paths


def sample_grids(an: Analysis, study_dir: str | Path) -> list[tuple[pd.Series, Any, dict[str, Any]]]:
    """Per frontier point, (row, figure, provenance) of input/output/target on fixed test images."""
    from hgsearch import plots

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
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png_b64(fig)}">'


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def front_view(an: Analysis) -> pd.DataFrame:
    """The frontier as displayed: one row per point, mean ± std over seeds, baseline flag."""
    flagged = an.flagged
    view = pd.DataFrame([{
        "family": r["family"], "params": f"{int(r['params']):,}", "val dB": _pm(r["psnr_val"], r["psnr_val_std"]),
        "test dB": _pm(r["psnr_test"], r["psnr_test_std"]), "seeds": int(r["n_seeds"]),
        "LxWxd_h": f"{int(r['depth'])}x{int(r['width'])}x{int(r['bottleneck'])}", "lr": f"{r['lr']:.1e}",
        "trial": int(r["trial"]), "note": "≤ baseline" if (r["family"], int(r["trial"])) in flagged else "",
    } for _, r in an.front.iterrows()])
    # "≤ baseline": the model is no better than the task's trivial baseline, so it learned nothing.
    if not flagged:
        view = view.drop(columns="note", errors="ignore")
    return view if an.seeds > 1 else view.drop(columns="seeds")


def comparison_view(comp: Comparison) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(headline numbers, per-bin gaps) as display tables."""
    head = pd.DataFrame([
        ("hypervolume hourglass (dB x M params)", f"{comp.hv_hourglass:.3f}"),
        ("hypervolume conventional (dB x M params)", f"{comp.hv_conventional:.3f}"),
        ("difference hourglass - conventional", f"{comp.hv_difference:+.3f}"),
        ("reference point (params, dB)", f"({comp.reference[0]:,.0f}, {comp.reference[1]:.2f})"),
        ("frontier points (hourglass, conventional)", f"{comp.front_sizes[0]}, {comp.front_sizes[1]}"),
        ("hourglass points dominated by conventional", f"{comp.hourglass_dominated:.0%}"),
        ("conventional points dominated by hourglass", f"{comp.conventional_dominated:.0%}"),
    ], columns=["quantity", "value"])

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    bins = pd.DataFrame([{
        "budget <=": f"{b.hi / 1e6:.3f}M", "hourglass dB": f(b.hourglass), "conventional dB": f(b.conventional),
        "gap dB": f(b.gap, "{:+.2f}"), "95% CI": "-" if b.ci is None else f"[{b.ci[0]:+.2f}, {b.ci[1]:+.2f}]",
    } for b in comp.bins])
    return head, bins


def scaling_view(scaling: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "budget <=": f"{r['hi'] / 1e6:.3f}M", "family": r["family"], "params": f"{int(r['params']):,}",
        "depth": int(r["depth"]), "width": int(r["width"]), "d_h": int(r["bottleneck"]),
        "d_h/width": f"{r['ratio']:.3f}", "val dB": f"{r['psnr_val']:.2f}",
    } for _, r in scaling.iterrows()])


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.warn{color:#b00}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"""


def render_html(an: Analysis, study_dir: str | Path, *, samples: bool = True) -> str:
    """The report as one HTML string: images inline as base64 PNG, no external reference at all."""
    from hgsearch import plots

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
    parts += ["<h2>Frontiers</h2>", _img(plots.frontier_figure(an.fr, **_figure_kw(an)), "frontier plot"),
              _table(front_view(an))]
    parts.append("<h2>Comparison</h2>")
    if an.comparison:
        head, bins = comparison_view(an.comparison)
        parts += [_table(head), "<h3>PSNR gap per budget (validation, best model within the budget)</h3>",
                  _table(bins)]
    else:
        parts.append("<p>Only one family has finished trials: nothing to compare.</p>")
    parts += ["<h2>Scaling pattern</h2>", _table(scaling_view(an.scaling)),
              _img(plots.scaling_figure(an.scaling, "best configuration per budget"), "scaling plot")]
    lines = load_curves(an.fr.study, an.storage)
    if len(lines):
        stopped = lines.loc[lines["state"] == "PRUNED", ["family", "trial"]].drop_duplicates()
        parts += ["<h2>Learning curves</h2>", _img(curves_figure(lines, frontier_trials(an), _CURVES_TITLE),
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
    parts += ["<h2>Settings and versions</h2>",
              f"<pre>{e(json.dumps(_json_ready({'settings': an.fr.settings, 'versions': package_versions()}), indent=2))}</pre>"]
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
