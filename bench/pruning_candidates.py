"""Replay candidate early-stopping rules that might keep the late bloomers (issue 22) on recorded curve tables.

    .venv/bin/python bench/pruning_candidates.py bench/curves-table-h200.csv --orders 100 --tpe-seeds 10
    .venv/bin/python bench/pruning_candidates.py bench/curves-fmnist.csv --orders 200 --tpe-seeds 0

Every candidate is the library's own hgsearch.search.pruning.Pruner (RunConfig's settings unless named), called
as the search calls it; a candidate only changes what `decide` is given: its settings (min_epochs), a margin
chosen per trial (learning rate, recent curve noise), a filtered peer list (similar learning rate), or
observations whose PSNR at the rung is replaced by a forecast of the final PSNR (extrapolation). Trials arrive
one at a time (bench/search_replay.py's replay_order and replay_tpe, same loading: the pruner sees
psnr_val_2048 when the table has it). For each candidate, over --orders random arrival orders per family:
  epochs spent   epochs trained with the whole table exhausted, over the table's full training;
  best kept      how often each family's best final model (final full-split validation PSNR) finishes;
  front kept     the share of each family's final frontier points (parameters x final validation PSNR) that finish;
  HV at C        test-PSNR hypervolume over the whole table's, median over the orders, at compute C (a third of
                 each family's table trained in full, as search_replay's C), random order; and with
                 --tpe-seeds, the same for TPE proposing (search_replay's tpe+RULE) at C/2 and C.
Not replayable here: evaluating an average of recent weights (EMA or a tail average) at a rung changes the
curve itself; it needs tables recorded with that evaluation.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import optuna

from hgsearch.config import RunConfig
from hgsearch.results.stats import hypervolume
from hgsearch.search.pruning import KEEP, Decision, Observation, Pruner


def _sibling(name: str) -> ModuleType:
    """bench/<name>.py as the module bench_<name> (the name tests/conftest.load_bench gives it, so it loads once)."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]


replay = _sibling("search_replay")

Rates = Mapping[tuple[str, int], float]  # (family, key) -> learning rate


@dataclass(frozen=True)
class LrMargin:
    """The margin grows with the trial's learning rate: base margin + per_doubling dB per doubling above ref_lr."""

    base: Pruner
    lr: Rates
    ref_lr: float
    per_doubling: float

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.base.rungs

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        doublings = max(0.0, math.log2(self.lr[(trial.family, trial.key)] / self.ref_lr))
        return replace(self.base, margin=self.base.margin + self.per_doubling * doublings).decide(
            trial, epoch, recorded)


@dataclass(frozen=True)
class NoiseMargin:
    """The margin grows with how much the trial's curve still moves: + k x the mean |change| of its last two
    epochs. One point has no change: at epoch 1 this is the base rule."""

    base: Pruner
    k: float

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.base.rungs

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        seen = trial.curve[:epoch][-3:]
        steps = [abs(b - a) for a, b in zip(seen, seen[1:], strict=False)]
        extra = self.k * statistics.fmean(steps) if steps else 0.0
        return replace(self.base, margin=self.base.margin + extra).decide(trial, epoch, recorded)


@dataclass(frozen=True)
class LrPeers:
    """Only peers whose learning rate is within a factor of the trial's are compared (and count for the quorum)."""

    base: Pruner
    lr: Rates
    factor: float

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.base.rungs

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        mine = self.lr[(trial.family, trial.key)]
        near = [o for o in recorded if abs(math.log(self.lr[(o.family, o.key)] / mine)) <= math.log(self.factor)]
        return self.base.decide(trial, epoch, near)


def forecast(curve: Sequence[float], last_epoch: int, points: int, optimistic: bool) -> float:
    """PSNR at last_epoch from a curve's last `points` points, linear in log(epoch) (learning curves flatten).
    Optimistic: the steepest step among those points; otherwise the least-squares slope. Never below the
    last point (a schedule's decay does not lose what it has)."""
    n = len(curve)
    if n >= last_epoch:
        return curve[last_epoch - 1]
    es = list(range(max(1, n - points + 1), n + 1))
    xs, ys = [math.log(e) for e in es], list(curve[es[0] - 1:])
    if len(xs) < 2:
        return ys[-1]
    if optimistic:
        slope = max((y1 - y0) / (x1 - x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))
    else:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return ys[-1] + max(slope, 0.0) * (math.log(last_epoch) - xs[-1])


@dataclass(frozen=True)
class Extrapolate:
    """At a rung, the trial's optimistic forecast of its final PSNR against each peer's final PSNR (known when the
    peer finished, else its least-squares forecast from all it recorded), through Pruner.decide on observations
    whose rung value is the forecast. With one point there is no forecast: the trial continues."""

    base: Pruner
    points: int

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.base.rungs

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        if epoch not in self.base.rungs or epoch < 2:
            return KEEP
        last = self.base.max_epochs

        def at_rung(o: Observation, value: float) -> Observation:
            return Observation(o.family, o.key, o.params, (*o.curve[:epoch - 1], value))

        me = at_rung(trial, forecast(trial.curve[:epoch], last, self.points, optimistic=True))
        peers = [at_rung(o, forecast(o.curve, last, self.points, optimistic=False))
                 for o in recorded if len(o.curve) >= epoch]
        return self.base.decide(me, epoch, peers)


Rule = Pruner | LrMargin | NoiseMargin | LrPeers | Extrapolate


def candidates(epochs: int, lr: Rates) -> dict[str, Rule]:
    cfg = RunConfig()
    default = Pruner(cfg.pruning, cfg.min_epochs, cfg.reduction_factor, epochs, cfg.prune_margin, cfg.prune_min_peers)
    return {
        "default (min_epochs 1)": default,
        "min_epochs 3": replace(default, min_epochs=3),
        "lr margin +0.5 dB/doubling above 5e-4": LrMargin(default, lr, 5e-4, 0.5),
        "lr margin +1 dB/doubling above 5e-4": LrMargin(default, lr, 5e-4, 1.0),
        "noise margin +2 x mean step": NoiseMargin(default, 2.0),
        "peers within lr x2": LrPeers(default, lr, 2.0),
        "peers within lr x4": LrPeers(default, lr, 4.0),
        "optimistic extrapolation (3 points)": Extrapolate(default, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--column", default=None, help="PSNR the pruner sees (default: psnr_val_2048 if present)")
    ap.add_argument("--orders", type=int, default=100, help="random arrival orders per family")
    ap.add_argument("--tpe-seeds", type=int, default=0, help="also replay TPE proposing, this many seeds")
    ap.add_argument("--budget", type=int, default=3_000_000)
    ap.add_argument("--ref-psnr", type=float, default=replay.BICUBIC_TEST_PSNR)
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.monotonic()
    table, column, epochs = replay.load(args.csv, args.column)
    families = sorted(table)
    lr = {(c.family, c.key): c.lr for cs in table.values() for c in cs}
    n = sum(len(cs) for cs in table.values())
    trials = max(1, math.ceil(min(len(cs) for cs in table.values()) / 3))
    full = trials * epochs * len(families)
    ref = (float(args.budget), args.ref_psnr)
    whole = hypervolume([(c.params, c.psnr_test) for cs in table.values() for c in cs], ref)
    spaces = {f: replay.TableSpace(f, args.budget, *replay.FMNIST_SUPERRES) for f in families}
    fronts = {f: len(replay.targets(table[f])[1]) for f in families}
    print(f"# {args.csv}: {', '.join(f'{f} {len(table[f])}' for f in families)} configurations, {epochs} epochs; "
          f"pruner sees {column}; {args.orders} random arrival orders per family"
          + (f", {args.tpe_seeds} TPE seeds" if args.tpe_seeds else ""))
    print(f"# final fronts: {', '.join(f'{f} {fronts[f]} points' for f in families)}; C = {trials} trials x "
          f"{epochs} epochs x {len(families)} families = {full} epochs")
    orders = {f: [random.Random(k * 7919 + i).sample(range(len(table[f])), len(table[f]))
                  for k in range(args.orders)] for i, f in enumerate(families)}
    rules: dict[str, Rule | None] = {"none (full training)": None, **candidates(epochs, lr)}
    tpe_cols = " | TPE: HV at C/2 | TPE: HV at C" if args.tpe_seeds else ""
    print("| rule | rungs | epochs spent | " + " | ".join(f"best kept: {f}" for f in families) + " | "
          + " | ".join(f"front kept: {f}" for f in families) + f" | random: HV at C{tpe_cols} |")
    print("|---|---|---|" + "---|" * (2 * len(families) + 1 + (2 if args.tpe_seeds else 0)))
    for name, rule in rules.items():
        runs = [[replay.replay_order(table[f], orders[f][k], rule) for f in families] for k in range(args.orders)]
        spent = sum(t[-1][0] for r in runs for t in r) / (n * epochs * args.orders)
        surv = [[replay.survival(table[f], r[i]) for r in runs] for i, f in enumerate(families)]
        best = [f"{sum(b for b, _, _ in s) / args.orders:.0%}" for s in surv]
        front = [f"{sum(k for _, k, _ in s) / (fronts[f] * args.orders):.0%}"
                 for s, f in zip(surv, families, strict=True)]
        hv = statistics.median(replay.hv_at(r, full, ref) / whole for r in runs)
        cells = [f"{hv:.3f}"]
        if args.tpe_seeds:
            tpe = [[replay.replay_tpe(table[f], seed * 7919 + i, rule, spaces[f]) for i, f in enumerate(families)]
                   for seed in range(args.tpe_seeds)]
            cells += [f"{statistics.median(replay.hv_at(r, c * full, ref) / whole for r in tpe):.3f}"
                      for c in (0.5, 1.0)]
        rungs = ",".join(map(str, rule.rungs)) if rule is not None else "-"
        print(f"| {name} | {rungs} | {spent:.0%} | " + " | ".join(best + front + cells) + " |")
    print(f"# best/front kept: share of orders (of the front points x orders) in which it finishes, the table "
          f"exhausted; HV: median test-PSNR hypervolume / the whole table's; {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
