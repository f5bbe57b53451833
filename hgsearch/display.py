"""Terminal display (rich): the live view of a running search (fed by run_search's reporter events)
and the result tables of `frontier` and `show`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd
from optuna.trial import TrialState
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hgsearch.events import Event, Note, Progress, Start, TrialEnd, TrialStart
from hgsearch.frontier import Frontier

if TYPE_CHECKING:
    from hgsearch.baselines import Baseline
    from hgsearch.report import Analysis


def plural(n: int, word: str) -> str:
    """'1 trial', '2 trials': counts read as English (word is the singular)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def psnr_verdict(psnr_val: float, base: "Baseline | None") -> str:
    """What to print after a validation PSNR: the task's trivial baseline, and the flag when at or under it."""
    if base is None:
        return ""
    if psnr_val <= base.psnr_val:
        return (f" - LEARNED NOTHING: at or under the trivial baseline ({base.method}: "
                f"{base.psnr_val:.2f} dB val / {base.psnr_test:.2f} dB test)")
    return f" (trivial baseline {base.psnr_val:.2f} dB val / {base.psnr_test:.2f} dB test: {base.method})"


class PlainProgress:
    """The search's progress as plain lines, for a stdout that is not a terminal (a log file, nohup, CI).

    One line when a trial starts and one when it ends; for long trials also one at the end of each
    epoch, once `epoch_every` seconds have passed since that trial's last line.
    """

    def __init__(self, stream: TextIO, target: int, epoch_every: float = 30.0) -> None:
        self.stream = stream
        self.target = target
        self.epoch_every = epoch_every
        self.done: dict[str, int] = {}
        self.last_line: dict[Any, float] = {}  # per worker: when its trial last printed
        self.steps: dict[Any, int] = {}  # per worker: steps per epoch of its current trial

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _line(self, text: str, worker: Any = None) -> None:
        tag = "" if worker is None else f"[worker {worker}] "
        self.stream.write(f"{time.strftime('%H:%M:%S')} {tag}{text}\n")
        self.stream.flush()  # a log read with tail -f shows each line as it happens
        self.last_line[worker] = time.monotonic()

    def __call__(self, ev: Event) -> None:
        w = getattr(ev, "worker", None)
        if isinstance(ev, Note):
            self._line(f"note: {ev.message}", w)
        elif isinstance(ev, Start):
            self.done, self.target = dict(ev.done), ev.target
            workers = f", {ev.workers} workers" if ev.workers > 1 else ""
            counts = ", ".join(f"{fam} {d}/{self.target}" for fam, d in self.done.items())
            self._line(f"study {ev.study} in {ev.storage}{workers}: trials done {counts}")
        elif isinstance(ev, TrialStart):
            s = ev.spec
            again = f" (retry of #{ev.retry_of[0]}, from epoch {ev.resumed_epoch})" if ev.retry_of else ""
            self._line(f"start {ev.family} #{ev.number}: LxWxd_h {s.depth}x{s.width}x{s.bottleneck}, "
                       f"{s.params:,} params, lr {ev.lr:.2e}{again}", w)
        elif isinstance(ev, Progress):
            self.steps[w] = ev.steps
            if ev.step == ev.steps and time.monotonic() - self.last_line.get(w, 0) >= self.epoch_every:
                self._line(f"  {ev.family} epoch {ev.epoch + 1}/{ev.epochs}: train loss {ev.loss:.5f}", w)
        elif isinstance(ev, TrialEnd):
            fam, t = ev.family, ev.trial
            if ev.reason is None:
                self.done[fam] = self.done.get(fam, 0) + 1
                a = t.user_attrs
                steps = f" of {plural(self.steps[w], 'step')}" if w in self.steps else ""
                self._line(f"done {fam} #{t.number}: val {a['psnr_val']:.2f} dB, test {a['psnr_test']:.2f} dB, "
                           f"{plural(a['epochs'], 'epoch')}{steps} in {a['seconds']:.1f} s "
                           f"({fam} {self.done[fam]}/{self.target})", w)
            elif t.state == TrialState.PRUNED:  # final: counts towards --trials
                self.done[fam] = self.done.get(fam, 0) + 1
                self._line(f"stopped {fam} #{t.number} at epoch {t.user_attrs.get('stopped_at_epoch')}: {_why(ev.reason)} "
                           f"({fam} {self.done[fam]}/{self.target})", w)
            else:
                self._line(f"failed {fam} #{t.number}: {ev.reason}", w)


def _why(reason: str | None) -> str:
    """A stopped trial's reason without its leading "stopped after epoch k:" (the line says it)."""
    head, _, rest = (reason or "").partition(": ")
    return rest if head.startswith("stopped after epoch") and rest else (reason or "")


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
            self.console.print(f"study [bold]{ev.study}[/] in {ev.storage}{workers}", soft_wrap=True)
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
            elif t.state == TrialState.PRUNED:
                self.done[ev.family] = self.done.get(ev.family, 0) + 1
                self.console.print(f"  [dim]{ev.family} #{t.number} stopped at epoch "
                                   f"{t.user_attrs.get('stopped_at_epoch')}:[/] {_why(ev.reason)}", highlight=False)
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


def frontier_table(fr: Frontier, base: "Baseline | None" = None) -> Table:
    """Each family's frontier as one table, smallest model first (what `run` prints at the end)."""
    view = pd.DataFrame([{
        "family": r["family"], "params": f"{int(r['params']):,}", "val dB": f"{r['psnr_val']:.2f}",
        "test dB": f"{r['psnr_test']:.2f}", "LxWxd_h": f"{int(r['depth'])}x{int(r['width'])}x{int(r['bottleneck'])}",
        "lr": f"{r['lr']:.1e}", "trial": int(r["trial"]),
        "note": "≤ baseline" if base is not None and r["psnr_val"] <= base.psnr_val else "",
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
    tables = [df_table(front_view(an), f"Pareto frontiers of {an.fr.study} ({plural(an.seeds, 'seed')} per point{base})")]
    if an.flagged:
        tables[0].caption = "≤ baseline: no better than the task's trivial baseline, so it learned nothing"
    if an.comparison:
        head, bins = comparison_view(an.comparison)
        tables += [df_table(head, "Hourglass vs conventional (validation PSNR)"),
                   df_table(bins, "PSNR gap at each budget (best model within it)")]
    if len(an.scaling):
        tables.append(df_table(scaling_view(an.scaling), "Best shape per budget"))
    return tables


def comparison_notes(an: "Analysis") -> list[str]:
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
                     f"baseline), so the comparison there is between untrained models: train longer, e.g. a "
                     f"new study with more than --epochs {epochs}")
    return notes


def state_table(study: str, state: pd.DataFrame) -> Table:
    """`show`: trials per state, best PSNRs and hours per family (and confirm's seed runs)."""
    table = Table(title=f"study {study} (PSNR and size of each family's best model)", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False,
                  collapse_padding=True)
    # val/test dB and params are those of the family's best model (by validation PSNR).
    for col in ("family", "complete", "stopped early", "running", "failed", "val dB", "test dB", "params", "hours"):
        table.add_column(col, justify="left" if col == "family" else "right", no_wrap=True)

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or pd.isna(v) else fmt.format(v)

    for _, r in state.iterrows():
        failed = str(r["failed"]) + (f" (+{r['other']} other)" if r["other"] else "")
        table.add_row(r["family"], str(r["complete"]), str(r["pruned"]), str(r["running"]), failed, num(r["best_val"], "{:.2f}"),
                      num(r["best_test"], "{:.2f}"), num(r["best_params"], "{:,.0f}"), f"{r['hours']:.2f}")
    return table
