"""The formatted tables that `run`, `frontier` and `show` print (rich) and the report shows (HTML)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

from hgsearch.results.analysis import Analysis
from hgsearch.results.settledness import Settledness, budget_label
from hgsearch.results.stats import Comparison
from hgsearch.results.trials import Frontier
from hgsearch.text import plural
from hgsearch.training.baselines import Baseline


def psnr_verdict(psnr_val: float, base: Baseline | None) -> str:
    """What to print after a validation PSNR: the task's trivial baseline, and the flag when at or under it."""
    if base is None:
        return ""
    if base.learned_nothing(psnr_val):
        return (f" - LEARNED NOTHING: at or under the trivial baseline ({base.method}: "
                f"{base.psnr_val:.2f} dB val / {base.psnr_test:.2f} dB test)")
    return f" (trivial baseline {base.psnr_val:.2f} dB val / {base.psnr_test:.2f} dB test: {base.method})"


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
        *([] if comp.shared_from is None else [
            (f"same, from {comp.shared_from / 1e6:.3f}M params (both families' range)",
             f"{comp.hv_shared_hourglass:.3f} - {comp.hv_shared_conventional:.3f} = {comp.hv_shared_difference:+.3f}"),
        ]),
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


def settled_view(s: Settledness) -> pd.DataFrame:
    """The verdict per budget as displayed: budget, state, gap and why (search.settled.Verdict.why)."""
    return pd.DataFrame([{
        "budget <=": budget_label(v.budget), "state": v.state, "gap dB": "-" if v.gap is None else f"{v.gap:+.2f}",
        "why": v.why(),
    } for v in s.verdicts], columns=["budget <=", "state", "gap dB", "why"])


def settled_table(s: Settledness) -> Table:
    """What `frontier` prints last: would more trials likely change the answer, per budget."""
    return df_table(settled_view(s), "Is the answer settled? (would more trials likely change it, per budget)")


def scaling_view(scaling: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "budget <=": f"{r['hi'] / 1e6:.3f}M", "family": r["family"], "params": f"{int(r['params']):,}",
        "depth": int(r["depth"]), "width": int(r["width"]), "d_h": int(r["bottleneck"]),
        "d_h/width": f"{r['ratio']:.3f}", "val dB": f"{r['psnr_val']:.2f}",
    } for _, r in scaling.iterrows()])


def frontier_table(fr: Frontier, base: Baseline | None = None) -> Table:
    """Each family's frontier as one table, smallest model first (what `run` prints at the end)."""
    view = pd.DataFrame([{
        "family": r["family"], "params": f"{int(r['params']):,}", "val dB": f"{r['psnr_val']:.2f}",
        "test dB": f"{r['psnr_test']:.2f}", "LxWxd_h": f"{int(r['depth'])}x{int(r['width'])}x{int(r['bottleneck'])}",
        "lr": f"{r['lr']:.1e}", "trial": int(r["trial"]),
        "note": "≤ baseline" if base is not None and base.learned_nothing(r["psnr_val"]) else "",
    } for _, r in fr.frontier.iterrows()])
    flagged = (view["note"] != "").any()
    if not flagged:
        view = view.drop(columns="note")
    title = f"Pareto frontiers of {fr.study} (selected on validation PSNR"
    title += f"; trivial baseline {base.psnr_val:.2f} dB val / {base.psnr_test:.2f} dB test)" if base else ")"
    table = df_table(view, title)
    if flagged:
        table.caption = "≤ baseline: no better than the task's trivial baseline, so it learned nothing"
    return table


PROSE = ("note", "why")  # columns of sentences: left-aligned and wrapped, so a table fits an 80-column terminal


def df_table(df: pd.DataFrame, title: str = "") -> Table:
    """A display DataFrame (already formatted strings) as a rich table; first column left-aligned."""
    # Compact enough for an 80-column terminal: no outer edge, one space of padding shared by neighbours.
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    for i, col in enumerate(df.columns):
        table.add_column(str(col), justify="left" if i == 0 or col in PROSE else "right", no_wrap=col not in PROSE)
    for r in df.itertuples(index=False):
        table.add_row(*(str(v) for v in r))
    return table


def analysis_tables(an: Analysis) -> list[Table]:
    """What `frontier` prints: the frontier on seed means, the comparison, the gap per budget, the shapes."""
    base = (f", baseline {an.baseline.psnr_val:.2f} dB val / {an.baseline.psnr_test:.2f} dB test"
            if an.baseline else "")
    tables = [df_table(front_view(an),
                       f"Pareto frontiers of {an.fr.study} ({plural(an.seeds, 'seed')} per point{base})")]
    if an.flagged:
        tables[0].caption = "≤ baseline: no better than the task's trivial baseline, so it learned nothing"
    if an.comparison:
        head, bins = comparison_view(an.comparison)
        tables += [df_table(head, "Hourglass vs conventional (validation PSNR)"),
                   df_table(bins, "PSNR gap at each budget (best model within it)")]
    if len(an.scaling):
        tables.append(df_table(scaling_view(an.scaling), "Best shape per budget"))
    return tables


def comparison_notes(an: Analysis) -> list[str]:
    """Lines under the comparison when it cannot be trusted yet, each with the command that settles it."""
    if not an.comparison:
        return []
    notes = []
    if an.seeds < 2:
        notes.append(f"the comparison rests on one seed per point, so a gap may be seed noise: run "
                     f"`hgsearch confirm --study {an.fr.study} --seeds 3`, then `hgsearch frontier` again")
    if an.flagged:
        epochs = an.settings.get("epochs")
        notes.append(f"{plural(len(an.flagged), 'frontier point')} learned nothing (at or under the trivial "
                     f"baseline), so the comparison there is between models that learned nothing: if their "
                     f"curves (curves.csv) still rise, train longer (a new study with more than --epochs {epochs}); "
                     f"if they are flat, the shape is too small for the task (e.g. a bottleneck of a few units)")
    return notes


def state_table(study: str, state: pd.DataFrame) -> Table:
    """`show`: trials per state, best PSNRs and hours per family (and confirm's seed runs)."""
    table = Table(title=f"study {study} (PSNR and size of each family's best model)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    # val/test dB and params are those of the family's best model (by validation PSNR).
    for col in ("family", "complete", "stopped early", "running", "failed", "val dB", "test dB", "params", "hours"):
        table.add_column(col, justify="left" if col == "family" else "right", no_wrap=True)

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or pd.isna(v) else fmt.format(v)

    for _, r in state.iterrows():
        failed = str(r["failed"]) + (f" (+{r['other']} other)" if r["other"] else "")
        table.add_row(r["family"], str(r["complete"]), str(r["pruned"]), str(r["running"]), failed,
                      num(r["best_val"], "{:.2f}"), num(r["best_test"], "{:.2f}"), num(r["best_params"], "{:,.0f}"),
                      f"{r['hours']:.2f}")
    return table
