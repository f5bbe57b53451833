"""Replay searches on a table of learning curves at equal compute: test-PSNR hypervolume against epochs trained.

    .venv/bin/python bench/search_replay.py bench/curves-fmnist.csv            # the small 16-curve CPU table
    .venv/bin/python bench/search_replay.py curves-table.csv --seeds 30        # bench/curves_table.py's GPU table

Strategies, each replayed per family with --seeds seeds until the family's table is exhausted:
  random       random search at full fidelity: the table in a random order, every trial trained in full.
  tpe          today's hgsearch at full fidelity: TPESampler(multivariate=True, n_startup_trials=10) proposes
               through hgsearch.model.space.sample; the proposal is mapped to the nearest configuration of the
               table not yet used (Euclidean distance in normalised coordinates: the size position in
               [0, 1] as space.sample defines it, log depth, the width position (Hourglass) and log
               learning rate, each divided by its range in the default space), and TPE is told that
               configuration's own coordinates and (parameters, final full-split validation PSNR).
  tpe+RULE     the same, with early stopping: trials arrive one at a time; after every epoch
               hgsearch.search.pruning.Pruner.decide (the search's own code, RunConfig's default settings) sees
               the curves recorded so far (the --column PSNR, the search's 2048-row subset when the table
               has it); a stopped trial is told to TPE as PRUNED and never reaches the frontier.
  random+RULE  random order with early stopping: the pruner's effect without TPE's.
  tpe+oracle, random+oracle (--oracle): a bound, not a rule: at the first rung, stop exactly the trials whose
               final validation PSNR a completed trial of no more parameters already beats (a pruner that knew
               every curve's end, paying the first rung's epochs for each trial it stops).
--min-epochs, --reduction-factor, --margin and --min-peers replay other pruner settings (default: RunConfig's).
Compute is epochs trained, split equally between the families (a search runs --trials per family). At
compute c, each family's completed trials within c / families epochs form the frontier; its hypervolume
(hgsearch.results.stats.hypervolume, parameters x test PSNR, reference (budget, bicubic test PSNR)) is
printed as a fraction of the whole table's. C = --trials x epochs x families is full-fidelity
compute for --trials per family (default: a third of each family's table).
Survival (a second table): over the --seeds replays (arrival orders), how often each family's best final model
(highest final full-split validation PSNR) finishes training, and the share of each family's final frontier points
(parameters x final full-split validation PSNR, over the whole table) that finish, with the table exhausted.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState, create_trial

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.model.space import depth_range, sample, size_range, width_range
from hgsearch.results.stats import hypervolume
from hgsearch.search.pruning import KEEP, RULES, Decision, Observation, Pruner, dominates, front_ranks
from hgsearch.search.sampler import STARTUP_TRIALS
from hgsearch.store.schema import DIRECTIONS

# Bicubic x2 super-resolution on Fashion-MNIST's test split (hgsearch.training.baselines.baseline, computed once
# on this machine: 19.1361 dB; it does not depend on --train-size).
BICUBIC_TEST_PSNR = 19.1361
FMNIST_SUPERRES = (196, 784)  # d_in, d_out of Fashion-MNIST x2 super-resolution


@dataclass(frozen=True)
class Config:
    """One configuration of the table: what the pruner sees per epoch and where it lands when finished."""

    family: str
    key: int
    params: int
    depth: int
    width: int  # the stream width d_z (the image size for conventional)
    lr: float
    curve: tuple[float, ...]  # the pruner's PSNR after epoch 1, 2, ...
    psnr_val: float  # final, full validation split: what TPE is told
    psnr_test: float  # final, test split: what the frontier is judged on


def load(path: str, column: str | None = None) -> tuple[dict[str, list[Config]], str, int]:
    """Complete configurations by family, the pruner's column, and the epoch count."""
    df = pd.read_csv(path, comment="#").sort_values(["family", "config", "epoch"])
    column = column or ("psnr_val_2048" if "psnr_val_2048" in df else "psnr_val")
    epochs = int(df["epoch"].max())
    out: dict[str, list[Config]] = {}
    for (family, key), g in df.groupby(["family", "config"], sort=True):
        if len(g) < epochs or list(g["epoch"]) != list(range(1, epochs + 1)):
            continue  # cut short by the recorder's time limit
        last = g.iloc[-1]
        out.setdefault(family, []).append(Config(
            family, int(key), int(last["params"]), int(last["depth"]), int(last["width"]),
            float(last["lr"]), tuple(g[column].astype(float)), float(last["psnr_val"]), float(last["psnr_test"])))
    return out, column, epochs


class Oracle:
    """The bound a pruner could reach at the same rungs: knows every configuration's final validation PSNR."""

    def __init__(self, configs: Sequence[Config], first_rung: int) -> None:
        self.final = {c.key: (c.params, c.psnr_val) for c in configs}
        self.rungs = (first_rung,)
        self.epochs = len(configs[0].curve)

    def decide(self, trial: Observation, epoch: int, recorded: Sequence[Observation]) -> Decision:
        if epoch not in self.rungs:
            return KEEP
        done = [self.final[o.key] for o in recorded if len(o.curve) == self.epochs]
        return Decision(any(dominates(p, self.final[trial.key]) for p in done), "oracle")


Stopper = Pruner | Oracle

# A family's replay: (cumulative epochs, (params, test PSNR) or None if stopped) after each trial.
Trajectory = list[tuple[int, tuple[int, float] | None]]


def train_one(c: Config, pruner: Stopper | None, recorded: list[Observation]) -> int:
    """Epochs trial c trains before the pruner stops it (all of them without one); records its curve."""
    reached = len(c.curve)
    if pruner is not None:
        for epoch in range(1, len(c.curve) + 1):
            if pruner.decide(Observation(c.family, c.key, c.params, c.curve[:epoch]), epoch, recorded).stop:
                reached = epoch
                break
    recorded.append(Observation(c.family, c.key, c.params, c.curve[:reached]))
    return reached


def replay_order(configs: Sequence[Config], order: Sequence[int], pruner: Stopper | None) -> Trajectory:
    """Trials in a fixed arrival order (random search), one at a time."""
    recorded: list[Observation] = []
    spent, out = 0, []
    for i in order:
        c = configs[i]
        reached = train_one(c, pruner, recorded)
        spent += reached
        out.append((spent, (c.params, c.psnr_test) if reached == len(c.curve) else None))
    return out


class TableSpace:
    """Normalised coordinates of the default space (version 2: depth, size and width positions, lr), for
    configurations and for TPE's proposals."""

    def __init__(self, family: str, budget: int, d_in: int, d_out: int) -> None:
        self.space = SpaceConfig()
        self.family, self.budget, self.d = family, budget, (d_in, d_out)
        self.depth = depth_range(family, budget, d_in, d_out, self.space)
        self.lr = self.space.lr

    def params_of(self, c: Config) -> dict[str, float | int]:
        """c as the values space.sample would have suggested: the inverse of space.decode, up to rounding."""
        depth = min(max(c.depth, self.depth[0]), self.depth[1])
        lo, hi = size_range(self.family, *self.d, self.budget, self.space, depth)
        out: dict[str, float | int] = {"depth": depth,
                                       "size": min(max(math.log(c.params / lo) / math.log(hi / lo), 0.0), 1.0)}
        if self.family == "hourglass":
            w_lo, w_hi = width_range(max(c.params, lo), depth, *self.d, self.space)
            k = min(max(c.width - w_lo + 1, 1), w_hi - w_lo + 1)
            # The middle, on the log axis, of the positions that decode to this width (space._log_pick).
            out["width_pos"] = min(math.log(k + 0.5) / math.log(w_hi - w_lo + 2), 1.0)
        out["lr"] = min(max(c.lr, self.lr[0]), self.lr[1])
        return out

    def point(self, p: dict[str, float | int]) -> np.ndarray:
        def unit(v: float, rng: tuple[float, float]) -> float:
            return (math.log(v) - math.log(rng[0])) / max(math.log(rng[1]) - math.log(rng[0]), 1e-12)
        xs = [p["size"], unit(p["depth"], self.depth), unit(p["lr"], self.lr)]
        if self.family == "hourglass":
            xs.append(p["width_pos"])
        return np.array(xs)


def replay_tpe(configs: Sequence[Config], seed: int, pruner: Stopper | None, space: TableSpace) -> Trajectory:
    """TPE proposing over the table (nearest unused configuration), with or without early stopping."""
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP_TRIALS)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    coords = [space.params_of(c) for c in configs]
    points = np.stack([space.point(p) for p in coords])
    unused = list(range(len(configs)))
    recorded: list[Observation] = []
    spent, out = 0, []
    while unused:
        trial = study.ask()
        sample(trial, space.family, space.budget, *space.d, SpaceConfig(), False)
        want = space.point(trial.params)
        i = unused[int(np.argmin(((points[unused] - want) ** 2).sum(1)))]
        unused.remove(i)
        dists: dict[str, BaseDistribution] = dict(trial.distributions)
        study.tell(trial, state=TrialState.FAIL)  # the proposal; TPE learns from the configuration trained
        c = configs[i]
        reached = train_one(c, pruner, recorded)
        spent += reached
        if reached == len(c.curve):
            study.add_trial(create_trial(params=coords[i], distributions=dists, values=[c.params, c.psnr_val]))
            out.append((spent, (c.params, c.psnr_test)))
        else:
            study.add_trial(create_trial(params=coords[i], distributions=dists, state=TrialState.PRUNED))
            out.append((spent, None))
    return out


def hv_at(trajectories: Sequence[Trajectory], compute: float, ref: tuple[float, float]) -> float:
    """Hypervolume of the families' completed trials when each has spent compute / len(trajectories) epochs."""
    share = compute / len(trajectories)
    pts = [p for t in trajectories for spent, p in t if spent <= share and p is not None]
    return hypervolume(pts, ref) if pts else 0.0


def to_reach(trajectories: Sequence[Trajectory], target: float, ref: tuple[float, float]) -> float:
    """Least total compute at which the hypervolume reaches target (inf if it never does)."""
    # The hypervolume only changes when a family finishes a trial: check those points, in order.
    k = len(trajectories)
    for c in sorted({spent * k for t in trajectories for spent, _ in t}):
        if hv_at(trajectories, c, ref) >= target:
            return c
    return math.inf


def strategies(epochs: int, rules: Sequence[str], settings: argparse.Namespace,
               oracle: bool = False) -> dict[str, Callable[[Sequence[Config], int, TableSpace], Trajectory]]:
    def pruner(rule: str) -> Pruner:
        return Pruner(rule, settings.min_epochs, settings.reduction_factor, epochs, settings.margin,
                      settings.min_peers)

    def shuffled(configs: Sequence[Config], seed: int) -> list[int]:
        return random.Random(seed).sample(range(len(configs)), len(configs))

    out: dict[str, Callable[[Sequence[Config], int, TableSpace], Trajectory]] = {
        "random": lambda cs, seed, sp: replay_order(cs, shuffled(cs, seed), None),
        "tpe": lambda cs, seed, sp: replay_tpe(cs, seed, None, sp),
    }
    for rule in rules:
        out[f"tpe+{rule}"] = lambda cs, seed, sp, r=rule: replay_tpe(cs, seed, pruner(r), sp)
        out[f"random+{rule}"] = lambda cs, seed, sp, r=rule: replay_order(cs, shuffled(cs, seed), pruner(r))
    if oracle:
        first = settings.min_epochs
        out["tpe+oracle"] = lambda cs, seed, sp: replay_tpe(cs, seed, Oracle(cs, first), sp)
        out["random+oracle"] = lambda cs, seed, sp: replay_order(cs, shuffled(cs, seed), Oracle(cs, first))
    return out


def targets(configs: Sequence[Config]) -> tuple[Config, list[Config]]:
    """A family's best final model and its final frontier, both judged on (parameters, final validation PSNR)."""
    ranks = front_ranks([(c.params, c.psnr_val) for c in configs])
    best = max(configs, key=lambda c: (c.psnr_val, -c.key))  # ties: the first configuration, as anywhere else
    return best, [c for c, r in zip(configs, ranks, strict=True) if r == 0]


def survival(configs: Sequence[Config], trajectory: Trajectory) -> tuple[bool, int, int]:
    """Whether the family's best final model finished in this replay, and how many of its frontier points of
    how many did."""
    # A trajectory names a finished trial by its point; a configuration's point is its own (params, test PSNR).
    done = {p for _, p in trajectory if p is not None}
    best, front = targets(configs)
    return (best.params, best.psnr_test) in done, sum((c.params, c.psnr_test) in done for c in front), len(front)


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    q = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75]) if all(map(math.isfinite, xs)) else None
    if q is None:  # inf (never reached) sorts last: take order statistics instead of interpolating
        s = sorted(xs)
        n = len(s)
        return s[(n - 1) // 4], s[(n - 1) // 2], s[(3 * (n - 1)) // 4]
    return float(q[0]), float(q[1]), float(q[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--column", default=None, help="PSNR the pruner sees (default: psnr_val_2048 if present)")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--trials", type=int, default=None,
                    help="full-fidelity trials per family (default: a third of the table)")
    ap.add_argument("--budget", type=int, default=3_000_000)
    ap.add_argument("--ref-psnr", type=float, default=BICUBIC_TEST_PSNR, help="reference test PSNR (bicubic)")
    cfg = RunConfig()
    ap.add_argument("--min-epochs", type=int, default=cfg.min_epochs, help="first rung (default: RunConfig's)")
    ap.add_argument("--reduction-factor", type=int, default=cfg.reduction_factor)
    ap.add_argument("--margin", type=float, default=cfg.prune_margin, help="prune_margin in dB")
    ap.add_argument("--min-peers", type=int, default=cfg.prune_min_peers)
    ap.add_argument("--rules", default=",".join(r for r in RULES if r != "none"), help="pruning rules to replay")
    ap.add_argument("--oracle", action="store_true", help="add the tpe+oracle and random+oracle bounds")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table, column, epochs = load(args.csv, args.column)
    families = sorted(table)
    n_min = min(len(v) for v in table.values())
    trials = args.trials or max(1, math.ceil(n_min / 3))
    full = trials * epochs * len(families)
    ref = (float(args.budget), args.ref_psnr)
    best = hypervolume([(c.params, c.psnr_test) for cs in table.values() for c in cs], ref)
    if best <= 0:
        print(f"no configuration in {args.csv} beats the reference ({args.budget:,} parameters, {args.ref_psnr} dB "
              f"test PSNR): pass the task's --ref-psnr and --budget", file=sys.stderr)
        return 2
    spaces = {f: TableSpace(f, args.budget, *FMNIST_SUPERRES) for f in families}
    rules = [r for r in args.rules.split(",") if r]
    if any(r not in RULES or r == "none" for r in rules):
        print(f"--rules takes pruning rules among {', '.join(r for r in RULES if r != 'none')}", file=sys.stderr)
        return 2
    print(f"# {args.csv}: {', '.join(f'{f} {len(table[f])}' for f in families)} complete configurations, "
          f"{epochs} epochs; pruner sees {column}; {args.seeds} seeds; reference ({args.budget:,}, {args.ref_psnr} dB)")
    print(f"# pruner: rungs {Pruner('pareto-asha', args.min_epochs, args.reduction_factor, epochs).rungs}, "
          f"margin {args.margin} dB, min peers {args.min_peers}")
    print(f"# whole-table test-PSNR hypervolume {best:.4g} (= 1.0 below); C = {trials} trials x {epochs} epochs x "
          f"{len(families)} families = {full} epochs")
    fractions = (1 / 6, 1 / 3, 1 / 2, 2 / 3, 1.0)
    results: dict[str, list[list[Trajectory]]] = {}
    for name, fn in strategies(epochs, rules, args, args.oracle).items():
        results[name] = [[fn(table[f], seed * 7919 + k, spaces[f]) for k, f in enumerate(families)]
                         for seed in range(args.seeds)]
    print("| strategy | " + " | ".join(f"HV at {f:.2g} C" for f in fractions)
          + " | compute to 95% of table HV | epochs per family to exhaust |")
    print("|---|" + "---|" * (len(fractions) + 2))
    med: dict[str, dict[float, float]] = {}
    for name, runs in results.items():
        cells, med[name] = [], {}
        for f in fractions:
            q = quartiles([hv_at(r, f * full, ref) / best for r in runs])
            med[name][f] = q[1]
            cells.append(f"{q[1]:.3f} [{q[0]:.3f}-{q[2]:.3f}]")
        reach = quartiles([to_reach(r, 0.95 * best, ref) / full for r in runs])
        exhaust = statistics.median(max(t[-1][0] for t in r) for r in runs)
        print(f"| {name} | " + " | ".join(cells)
              + f" | {reach[1]:.2f} C [{reach[0]:.2f}-{reach[2]:.2f}] | {exhaust:.0f} |")
    print("# cells: median [25th-75th percentile] over seeds, hypervolume / whole-table hypervolume; "
          "compute in units of C")
    target = med["tpe"][1.0]
    for rule in rules:
        name = f"tpe+{rule}"
        third = med[name][1 / 3]
        lower = sum(hv_at(r, full, ref) / best < target for r in results[name])
        print(f"target ({name}): median HV at C/3 {third:.3f} vs full-fidelity TPE's median at C {target:.3f}: "
              f"{'MET' if third >= target else 'NOT MET'}; at equal compute C {med[name][1.0]:.3f} vs {target:.3f}: "
              f"{'not lower' if med[name][1.0] >= target else 'LOWER'} "
              f"({lower} of {args.seeds} seeds end below TPE's median)")
    print()
    print("| strategy | " + " | ".join(f"{f}: best final model kept" for f in families)
          + " | " + " | ".join(f"{f}: final front points kept" for f in families) + " |")
    print("|---|" + "---|" * (2 * len(families)))
    for name, runs in results.items():
        per = [[survival(table[f], r[k]) for r in runs] for k, f in enumerate(families)]
        best_cells = [f"{sum(b for b, _, _ in s) / len(s):.0%}" for s in per]
        front_cells = [f"{sum(n for _, n, _ in s) / sum(m for _, _, m in s):.0%} (of {s[0][2]})" for s in per]
        print(f"| {name} | " + " | ".join(best_cells + front_cells) + " |")
    print(f"# survival over {args.seeds} seeds (arrival orders), each family's table exhausted; best model and "
          "front judged on final full-split validation PSNR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
