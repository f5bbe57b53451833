"""A running search's progress: the live terminal view (rich) or plain lines when stdout is not a terminal."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hgsearch.events import Event, Note, Progress, Start, TrialEnd, TrialStart
from hgsearch.text import plural

if TYPE_CHECKING:
    from hgsearch.training.baselines import Baseline


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
        self.base: Baseline | None = None

    def __enter__(self) -> PlainProgress:
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
            self.done, self.target, self.base = dict(ev.done), ev.target, ev.baseline
            workers = f", {ev.workers} workers" if ev.workers > 1 else ""
            counts = ", ".join(f"{fam} {d}/{self.target}" for fam, d in self.done.items())
            self._line(f"study {ev.study} in {ev.storage}{workers}: trials done {counts}{_base_line(ev.baseline)}")
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
                self._line(f"done {fam} #{t.number}: val {a['psnr_val']:.2f} dB{_vs_base(a['psnr_val'], self.base)}, "
                           f"test {a['psnr_test']:.2f} dB, {plural(a['epochs'], 'epoch')}{steps} in "
                           f"{a['seconds']:.1f} s ({fam} {self.done[fam]}/{self.target})", w)
            elif t.state == TrialState.PRUNED:  # final: counts towards --trials
                self.done[fam] = self.done.get(fam, 0) + 1
                self._line(f"stopped {fam} #{t.number} at epoch {t.user_attrs.get('stopped_at_epoch')}: "
                           f"{_why(ev.reason)} "
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
        self.base: Baseline | None = None

    def __enter__(self) -> LiveDisplay:
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
            self.target, self.base = ev.target, ev.baseline
            workers = f", {ev.workers} workers" if ev.workers > 1 else ""
            self.console.print(f"study [bold]{ev.study}[/] in {ev.storage}{workers}{_base_line(ev.baseline)}",
                               soft_wrap=True, highlight=False)
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
                                   f"val {a['psnr_val']:.2f} dB{_vs_base(a['psnr_val'], self.base)}, "
                                   f"test {a['psnr_test']:.2f} dB, {a['seconds']:.1f} s", highlight=False)
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


def _base_line(base: Baseline | None) -> str:
    """The start line's note of the task's trivial baseline (what a model that learned nothing scores)."""
    return "" if base is None else (f"; trivial baseline ({base.method}) {base.psnr_val:.2f} dB val / "
                                    f"{base.psnr_test:.2f} dB test")


def _vs_base(psnr_val: float, base: Baseline | None) -> str:
    """Beside a trial's validation PSNR: the baseline, flagged when the trial is at or under it."""
    if base is None:
        return ""
    return (f" (LEARNED NOTHING: at or under the baseline {base.psnr_val:.2f})" if base.learned_nothing(psnr_val)
            else f" (baseline {base.psnr_val:.2f})")
