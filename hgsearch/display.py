"""Terminal display (rich): the live view of a running search (fed by run_search's reporter events)
and the result tables of `frontier` and `show`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hgsearch.events import Event, Note, Progress, Start, TrialEnd, TrialStart
from hgsearch.frontier import Frontier

if TYPE_CHECKING:
    from hgsearch.report import Analysis


class LiveDisplay:
    """Trials done/total per family, the current trial's epoch and loss, elapsed time and ETA."""

    def __init__(self, console: Console, target: int) -> None:
        self.console = console
        self.target = target
        self.done: dict[str, int] = {}
        self.start_done: dict[str, int] = {}
        # Per worker (None: the run's only process); `run --workers N` tags each event with its worker.
        self.current: dict[Any, str] = {}
        self.status: dict[Any, str] = {}
        self.t0 = time.monotonic()
        # Started at the "start" event, once data and storage are ready, so that an early error
        # is not preceded by an empty live panel.
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
        self.started = False

    def __enter__(self) -> "LiveDisplay":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.live.__exit__(*exc)

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, Note):
            self.console.print(f"[yellow]note:[/] {ev.message}")
        elif isinstance(ev, Start):
            self.done = dict(ev.done)
            self.start_done = dict(ev.done)
            self.target = ev.target
            workers = f", {ev.workers} workers" if ev.workers > 1 else ""
            self.console.print(f"study [bold]{ev.study}[/] in {ev.storage}{workers}")
            self.live.__enter__()
            self.started = True
        elif isinstance(ev, TrialStart):
            s, w = ev.spec, ev.worker
            self.current[w] = ("" if w is None else f"[{w}] ") + (
                f"{ev.family} #{ev.number}: width {s.width}, bottleneck {s.bottleneck}, "
                f"depth {s.depth}, {s.params / 1e6:.3f}M params, lr {ev.lr:.2e}")
            self.status[w] = "starting"
        elif isinstance(ev, Progress):
            self.status[ev.worker] = (f"epoch {ev.epoch + 1}/{ev.epochs}, "
                                      f"step {ev.step}/{ev.steps}, loss {ev.loss:.5f}")
        elif isinstance(ev, TrialEnd):
            t = ev.trial
            if ev.reason is None:
                self.done[ev.family] = self.done.get(ev.family, 0) + 1
                a = t.user_attrs
                self.console.print(f"  {ev.family} #{t.number}: {a['params'] / 1e6:.3f}M params, "
                                   f"val {a['psnr_val']:.2f} dB, test {a['psnr_test']:.2f} dB, {a['seconds']:.1f} s")
            else:
                self.console.print(f"  [red]{ev.family} #{t.number} failed:[/] {ev.reason}")
        self.live.update(self._render())

    def _render(self) -> Group:
        elapsed = time.monotonic() - self.t0
        new = sum(self.done.values()) - sum(self.start_done.values())
        left = sum(max(0, self.target - d) for d in self.done.values())
        eta = f"{elapsed / new * left / 60:.1f} min" if new else "estimating"
        table = Table.grid(padding=(0, 2))
        for fam, d in self.done.items():
            table.add_row(Text(fam, style="bold"), f"{d}/{self.target} trials")
        lines = []
        for w, current in self.current.items():
            lines += [Text(current), Text(self.status.get(w, ""), style="dim")]
        return Group(table, *lines,
                     Text(f"elapsed {elapsed / 60:.1f} min, ETA {eta}", style="dim"))


def frontier_table(fr: Frontier) -> Table:
    """Each family's frontier as one table, smallest model first (what `run` prints at the end)."""
    view = pd.DataFrame([{
        "family": r["family"], "params": f"{int(r['params']):,}", "val dB": f"{r['psnr_val']:.2f}",
        "test dB": f"{r['psnr_test']:.2f}", "LxWxd_h": f"{int(r['depth'])}x{int(r['width'])}x{int(r['bottleneck'])}",
        "lr": f"{r['lr']:.1e}", "trial": int(r["trial"]),
    } for _, r in fr.frontier.iterrows()])
    return df_table(view, f"Pareto frontiers of {fr.study} (selected on validation PSNR)")


def df_table(df: pd.DataFrame, title: str = "") -> Table:
    """A display DataFrame (already formatted strings) as a rich table; first column left-aligned."""
    # Compact enough for an 80-column terminal: no outer edge, one space of padding shared by neighbours.
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    for i, col in enumerate(df.columns):
        table.add_column(str(col), justify="left" if i == 0 or col == "note" else "right", no_wrap=col != "note")
    for r in df.itertuples(index=False):
        table.add_row(*(str(v) for v in r))
    return table


def analysis_tables(an: "Analysis") -> list[Table]:
    """What `frontier` prints: the frontier on seed means, the comparison, the gap per budget, the shapes."""
    from hgsearch.report import comparison_view, front_view, scaling_view

    base = (f", baseline {an.baseline.psnr_val:.2f} dB val / {an.baseline.psnr_test:.2f} dB test"
            if an.baseline else "")
    tables = [df_table(front_view(an), f"Pareto frontiers of {an.fr.study} ({an.seeds} seed(s) per point{base})")]
    if an.flagged:
        tables[0].caption = "≤ baseline: no better than the task's trivial baseline, so it learned nothing"
    if an.comparison:
        head, bins = comparison_view(an.comparison)
        tables += [df_table(head, "Hourglass vs conventional (validation PSNR)"),
                   df_table(bins, "PSNR gap at each budget (best model within it)")]
    if len(an.scaling):
        tables.append(df_table(scaling_view(an.scaling), "Best shape per budget"))
    return tables


def state_table(study: str, state: pd.DataFrame) -> Table:
    """`show`: trials per state, best PSNRs and hours per family (and confirm's seed runs)."""
    table = Table(title=f"study {study} (PSNR and size of each family's best model)", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    # val/test dB and params are those of the family's best model (by validation PSNR).
    for col in ("family", "complete", "running", "failed", "val dB", "test dB", "params", "hours"):
        table.add_column(col, justify="left" if col == "family" else "right", no_wrap=True)

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or pd.isna(v) else fmt.format(v)

    for _, r in state.iterrows():
        failed = str(r["failed"]) + (f" (+{r['other']} other)" if r["other"] else "")
        table.add_row(r["family"], str(r["complete"]), str(r["running"]), failed, num(r["best_val"], "{:.2f}"),
                      num(r["best_test"], "{:.2f}"), num(r["best_params"], "{:,.0f}"), f"{r['hours']:.2f}")
    return table
