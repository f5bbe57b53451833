"""Terminal display (rich): the live view of a running search, fed by run_search's reporter events
(the result tables of `frontier` and `show` are in tables.py)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


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

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "note":
            self.console.print(f"[yellow]note:[/] {info['message']}")
        elif event == "start":
            self.done = dict(info["done"])
            self.start_done = dict(info["done"])
            self.target = info["target"]
            workers = f", {info['workers']} workers" if info.get("workers", 1) > 1 else ""
            self.console.print(f"study [bold]{info['study']}[/] in {info['storage']}{workers}")
            self.live.__enter__()
            self.started = True
        elif event == "trial_start":
            s, w = info["spec"], info.get("worker")
            self.current[w] = ("" if w is None else f"[{w}] ") + (
                f"{info['family']} #{info['number']}: width {s.width}, bottleneck {s.bottleneck}, "
                f"depth {s.depth}, {s.params / 1e6:.3f}M params, lr {info['lr']:.2e}")
            self.status[w] = "starting"
        elif event == "progress":
            self.status[info.get("worker")] = (f"epoch {info['epoch'] + 1}/{info['epochs']}, "
                                               f"step {info['step']}/{info['steps']}, loss {info['loss']:.5f}")
        elif event == "trial_end":
            t = info["trial"]
            if info["reason"] is None:
                self.done[info["family"]] = self.done.get(info["family"], 0) + 1
                a = t.user_attrs
                self.console.print(f"  {info['family']} #{t.number}: {a['params'] / 1e6:.3f}M params, "
                                   f"val {a['psnr_val']:.2f} dB, test {a['psnr_test']:.2f} dB, {a['seconds']:.1f} s")
            else:
                self.console.print(f"  [red]{info['family']} #{t.number} failed:[/] {info['reason']}")
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


