"""Search-quality benchmark: replay whole searches of the default space against a recorded table, per sampler.

    .venv/bin/python bench/search_quality.py bench/curves-search-cpu.csv                 # every sampler, 30 seeds
    .venv/bin/python bench/search_quality.py bench/curves-search-cpu.csv --samplers qmc --seeds 3 --trials 12

The table is bench/curves_record.py's (--protocol search): configurations of the default space with
their full validation curves. A replayed search is hgsearch's own: each family's k-th configuration
is drawn by hgsearch.search.sampler.draw (the real make_sampler and space.sample, on the canonical
history, seeded by --seed-th search and family), mapped to the nearest configuration of the table not
yet used (Euclidean in the sampler's coordinates, each scaled to [0, 1]: log depth over the family's
depth range, size, width position, log learning rate), and "trained": the real pruner
(hgsearch.search.pruning.Pruner with RunConfig's defaults, rungs below the table's epochs) sees its
recorded per-epoch curve (psnr_val_2048, the search's per-epoch subset) against the trials before it,
and the sampler is told the table configuration's own coordinates and (parameters, final full-split
validation PSNR), or PRUNED. Searches of 40 trials are replayed once; the 12- and 20-trial answers are
their prefixes (a search's first draws do not depend on how long it will run).

Per sampler and trial count, over the seeds (median, mean and 25-75% range):
  hv regret   1 - hypervolume of the found front / the table's, per family (reference: budget, bicubic
              validation PSNR), averaged over the families; moocore.hypervolume.
  igd+        IGD+ of the found front to the table's (parameters / budget and PSNR scaled by the
              table's PSNR range, both minimised); moocore.igd_plus.
  agree       answer agreement: the share of (search, budget) pairs where the found gap (best Hourglass
              minus best conventional within the budget, hgsearch.search.settled.gap_at) lies within
              MOVE_DB of the table's and does not name the opposite winner; budgets settled.budget_grid.
              Also the worst budget's share.
  band        the 25-75% attainment band: per family and budget, the interquartile range over seeds of
              the best PSNR found within the budget, dB, averaged.
  pruned      trials stopped early (share); draw ms: the median cost of one draw.
Draw cost (--draw-cost): the seconds of one draw (sampler.draw) after 40 and 200 finished trials of a
family (histories of random configurations with made-up results), median of 5.
Settling (--settle N): searches that start at N trials per family and add settled.SETTLE_STEP per family
until settled.is_settled (or 60), as `run --until-settled`: how often they settle, at how many trials,
and how often their answer then agrees with the truth at every budget.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import moocore
import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hgsearch.config import RunConfig, SpaceConfig
from hgsearch.model.space import depth_range, size_range, width_range
from hgsearch.names import FAMILIES, SAMPLERS
from hgsearch.search import settled
from hgsearch.search.pruning import Observation, Pruner
from hgsearch.search.sampler import draw

D_IN, D_OUT = 196, 784  # Fashion-MNIST x2 super-resolution
COORDS = ("depth", "size", "width_pos", "lr")
SETTLE_CAP = 60  # trials per family a settling search may reach (run's --max-trials)


@dataclass(frozen=True)
class Config:
    """One recorded configuration: what the sampler is told, what the pruner sees, where it lands."""

    family: str
    key: int
    params: int
    coords: dict[str, float]
    curve: tuple[float, ...]  # psnr_val_2048 after each epoch
    psnr_val: float  # final, full validation split
    shape: tuple[int, int] = (0, 0)  # (width, bottleneck)


def load(path: str, per_family: int = 0) -> tuple[dict[str, list[Config]], dict[str, str], int]:
    """Complete configurations by family (the first per_family of each, 0: all), the settings line, the epochs."""
    settings = {}
    with open(path) as f:
        for line in f:
            if line.startswith("# settings:"):
                settings = dict(kv.split("=", 1) for kv in line.removeprefix("# settings:").split())
    df = pd.read_csv(path, comment="#").sort_values(["family", "config", "epoch"])
    epochs = int(settings["epochs"])
    table: dict[str, list[Config]] = {f: [] for f in FAMILIES}
    for (fam, key), g in df.groupby(["family", "config"]):
        if len(g) != epochs or (per_family and key >= per_family):
            continue  # still being recorded, or past the prefix asked for (the table grows in draw order)
        r = g.iloc[-1]
        coords = {c: float(r[f"p_{c}"]) for c in COORDS if not math.isnan(r[f"p_{c}"])}
        coords["depth"] = int(coords["depth"])
        table[fam].append(Config(fam, int(key), int(r["params"]), coords, tuple(g["psnr_val_2048"]),
                                 float(r["psnr_val"]), (int(r["width"]), int(r["bottleneck"]))))
    return table, settings, epochs


def scaled(coords: dict[str, float], fam: str, budget: int, space: SpaceConfig) -> np.ndarray:
    lo, hi = depth_range(fam, budget, D_IN, D_OUT, space) or (1, 1)
    lr_lo, lr_hi = space.lr
    out = [math.log(coords["depth"] / lo) / max(math.log(hi / lo), 1e-9), coords["size"],
           math.log(coords["lr"] / lr_lo) / math.log(lr_hi / lr_lo)]
    if "width_pos" in coords:
        out.append(coords["width_pos"])
    return np.array(out)


def in_space(c: Config, budget: int, space: SpaceConfig) -> Config | None:
    """The configuration with its coordinates in another space (a narrower Hourglass ratio), None when outside it.

    The size position is taken at the configuration's own parameter count (the target it was drawn at
    is at most one bottleneck unit more), the width position at the middle of the span that picks its width.
    """
    if c.family != "hourglass":
        return c
    width, bottleneck = c.shape
    if bottleneck / width < space.ratio[0]:
        return None
    depth = int(c.coords["depth"])
    rng = size_range("hourglass", D_IN, D_OUT, budget, space, depth)
    if rng is None:
        return None
    lo, hi = rng
    size = min(1.0, max(0.0, math.log(c.params / lo) / math.log(hi / lo)))
    target = int(round(math.exp(math.log(lo) + size * (math.log(hi) - math.log(lo)))))
    w_lo, w_hi = width_range(target, depth, D_IN, D_OUT, space)
    k = min(max(width, w_lo), w_hi) - w_lo + 1
    pos = min(1.0, math.log(k + 0.5) / math.log(w_hi - w_lo + 2))
    return Config(c.family, c.key, c.params, {**c.coords, "size": size, "width_pos": pos}, c.curve, c.psnr_val,
                  c.shape)


def told(c: Config, dists: dict, state: TrialState) -> FrozenTrial:
    """The table configuration as the sampler's history holds it."""
    return optuna.trial.create_trial(state=state, params=c.coords, distributions=dists,
                                     values=[float(c.params), c.psnr_val] if state == TrialState.COMPLETE else None)


def replay(table: list[Config], fam: str, cfg: RunConfig, n: int, epochs: int) -> tuple[list, list[float]]:
    """One family's search of n trials: [(config, completed?)] in order, and the seconds of each draw."""
    pruner = Pruner(cfg.pruning, cfg.min_epochs, cfg.reduction_factor, epochs, cfg.prune_margin, cfg.prune_min_peers)
    pts = np.stack([scaled(c.coords, fam, cfg.budget, cfg.space) for c in table])
    free = np.ones(len(table), bool)
    seen: list[FrozenTrial] = []
    recorded: list[Observation] = []
    out, secs = [], []
    for j in range(n):
        t0 = time.perf_counter()
        params, dists = draw(cfg, fam, j, seen, D_IN, D_OUT)
        secs.append(time.perf_counter() - t0)
        d = np.linalg.norm(pts - scaled(params, fam, cfg.budget, cfg.space), axis=1)
        d[~free] = np.inf
        i = int(np.argmin(d))
        free[i] = False
        c = table[i]
        stop = next((e for e in pruner.rungs
                     if pruner.decide(Observation(fam, j, c.params, c.curve[:e]), e, recorded).stop), None)
        curve = c.curve if stop is None else c.curve[:stop]
        recorded.append(Observation(fam, j, c.params, curve))
        seen.append(told(c, dists, TrialState.COMPLETE if stop is None else TrialState.PRUNED))
        out.append((c, stop is None))
    return out, secs


def front_pts(found: list[tuple[Config, bool]]) -> list[tuple[int, float]]:
    return [(c.params, c.psnr_val) for c, done in found if done]


def metrics(found: dict[str, list], table: dict[str, list[Config]], budget: int, base: float,
            grid: list[int]) -> dict:
    """hv regret, igd+ and the gaps at each budget of one search."""
    hi = max(c.psnr_val for cs in table.values() for c in cs)
    regret, igd = [], []
    for fam in FAMILIES:
        true_pts = np.array([(c.params / budget, -(c.psnr_val - base) / (hi - base)) for c in table[fam]])
        got = np.array([(p / budget, -(v - base) / (hi - base)) for p, v in front_pts(found[fam])]).reshape(-1, 2)
        ref = np.array([1.0, 0.0])
        hv_true = moocore.hypervolume(true_pts, ref=ref)
        hv_got = moocore.hypervolume(got, ref=ref) if len(got) else 0.0
        regret.append(1 - hv_got / hv_true)
        igd.append(moocore.igd_plus(got, ref=moocore.filter_dominated(true_pts)) if len(got) else float("nan"))
    pts = {f: front_pts(found[f]) for f in FAMILIES}
    return {"regret": statistics.mean(regret), "igd": statistics.mean(igd),
            "gaps": [settled.gap_at(pts, b) for b in grid],
            "best": {f: [settled.best_within(pts[f], b) for b in grid] for f in FAMILIES},
            "pruned": sum(not done for f in FAMILIES for _, done in found[f]) / sum(len(found[f]) for f in FAMILIES)}


def agrees(gap: float | None, truth: float | None) -> bool:
    """Within MOVE_DB of the truth and never the opposite winner (a tie within seed noise names none)."""
    if gap is None or truth is None:
        return gap is None and truth is None
    opposite = gap * truth < 0 and min(abs(gap), abs(truth)) > settled.TIE_DB
    return abs(gap - truth) <= settled.MOVE_DB and not opposite


def q(xs: list[float]) -> str:
    """median (mean) [25%, 75%]"""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "-"
    a, b, c = np.percentile(xs, [25, 50, 75])
    return f"{b:.3f} ({statistics.mean(xs):.3f}) [{a:.3f}, {c:.3f}]"


def draw_cost(samplers: list[str]) -> None:
    """Median seconds of one draw after 40 and 200 finished trials (the history's results are made up)."""
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"python {' '.join(sys.argv)}")
    print("| sampler | draw after 40 trials, s | after 200, s |\n|---|---|---|")
    rng = np.random.default_rng(0)
    for name in samplers:
        cfg = RunConfig(budget=3_000_000, sampler=name)
        seen: list[FrozenTrial] = []
        for j in range(200):
            params, dists = draw(RunConfig(budget=3_000_000, sampler="random"), "hourglass", j, seen, D_IN, D_OUT)
            seen.append(optuna.trial.create_trial(state=TrialState.COMPLETE, params=params, distributions=dists,
                                                  values=[float(rng.uniform(3e5, 3e6)), float(rng.normal(21, 1))]))
        cost = []
        for n in (40, 200):
            times = []
            for k in range(5):
                t0 = time.perf_counter()
                draw(cfg, "hourglass", n + k, seen[:n], D_IN, D_OUT)
                times.append(time.perf_counter() - t0)
            cost.append(statistics.median(times))
        print(f"| {name} | {cost[0]:.3f} | {cost[1]:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--trials", default="12,20,40", help="trial counts per family; the largest is replayed")
    ap.add_argument("--settle", type=int, default=0, metavar="N",
                    help="also validate the settling rule (run --until-settled) from N trials per family")
    ap.add_argument("--baseline", type=float, default=19.17,
                    help="bicubic validation PSNR (Fashion-MNIST x2: 19.17 dB, README)")
    ap.add_argument("--ratio-min", type=float, default=0.0,
                    help="a prior: draw from a space whose Hourglass bottleneck/width starts here (default: the "
                    "default space); the table keeps the configurations inside it")
    ap.add_argument("--per-family", type=int, default=0,
                    help="use the table's first N configurations per family (a growing table's prefix); 0: all")
    ap.add_argument("--draw-cost", action="store_true", help="only time one draw after 40 and 200 trials")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.draw_cost:
        draw_cost(args.samplers.split(","))
        return
    table, settings, epochs = load(args.table, args.per_family)
    budget = int(settings["budget"])
    grid = settled.budget_grid(budget, settled.comparison_floor(budget, RunConfig().space.min_fraction, D_IN, D_OUT))
    counts = sorted(int(x) for x in args.trials.split(","))
    truth = {f: [(c.params, c.psnr_val) for c in table[f]] for f in FAMILIES}
    true_gaps = [settled.gap_at(truth, b) for b in grid]
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"python {' '.join(sys.argv)}")
    print(f"# table {args.table}: {len(table['hourglass'])} hourglass + {len(table['conventional'])} conventional, "
          f"{epochs} epochs, budget {budget:,}; budgets {grid}; true gaps "
          + ", ".join("-" if g is None else f"{g:+.3f}" for g in true_gaps))
    print("| sampler | trials/family | hv regret | igd+ | agree (all budgets) | agree (worst budget) "
          "| band dB | pruned | draw ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    space = SpaceConfig(ratio=(args.ratio_min, SpaceConfig().ratio[1])) if args.ratio_min else SpaceConfig()
    drawn_from = {f: [c for c in (in_space(c, budget, space) if args.ratio_min else c for c in table[f]) if c]
                  for f in FAMILIES}
    for name in args.samplers.split(","):
        label = f"{name}, ratio >= {args.ratio_min:g}" if args.ratio_min else name
        runs, draw_secs = [], []
        for seed in range(args.seeds):
            cfg = RunConfig(budget=budget, sampler=name, seed=seed, epochs=epochs, space=space)
            found = {}
            for fam in FAMILIES:
                n = max(counts) if not args.settle else max(max(counts), SETTLE_CAP)
                found[fam], secs = replay(drawn_from[fam], fam, cfg, min(n, len(drawn_from[fam]) // 2), epochs)
                draw_secs += secs
            runs.append(found)
        for n in counts:
            ms = [metrics({f: r[f][:n] for f in FAMILIES}, table, budget, args.baseline, grid) for r in runs]
            per_budget = [[agrees(m["gaps"][k], true_gaps[k]) for m in ms] for k in range(len(grid))
                          if true_gaps[k] is not None]
            band = [float(np.subtract(*np.percentile([m["best"][f][k] for m in ms], [75, 25])))
                    for f in FAMILIES for k in range(len(grid)) if all(m["best"][f][k] is not None for m in ms)]
            print(f"| {label} | {n} | {q([m['regret'] for m in ms])} | {q([m['igd'] for m in ms])} "
                  f"| {np.mean([a for b in per_budget for a in b]):.0%} | {min(np.mean(b) for b in per_budget):.0%} "
                  f"| {statistics.mean(band):.3f} | {statistics.mean(m['pruned'] for m in ms):.0%} "
                  f"| {1000 * statistics.median(draw_secs):.0f} |", flush=True)
        if args.settle:
            settle_table(label, runs, grid, true_gaps, args.settle)


def settle_table(label: str, runs: list[dict], grid: list[int], true_gaps: list, start: int) -> None:
    """The settling rule (run --until-settled) replayed with its knobs at several values: for each, how many
    searches settle before SETTLE_CAP, at how many trials, and how often their answer then agrees."""
    knobs = [(s, g, m, h) for h in (False, True) for m in (3, 6) for s in (0.25, 0.5) for g in (math.inf, 0.05)]
    for last_share, improve_db, min_trials, halves in knobs:
        stops, agree = [], []
        for r in runs:
            n, cap = start, min(SETTLE_CAP, len(r["hourglass"]), len(r["conventional"]))
            while True:
                pts = {f: front_pts(r[f][:n]) for f in FAMILIES}
                vs = settled.verdicts(pts, grid, last_share=last_share, improve_db=improve_db,
                                      min_trials=min_trials, halves=halves)
                if settled.is_settled(vs) or n >= cap:
                    break
                n = min(cap, n + settled.SETTLE_STEP)
            gaps = [settled.gap_at(pts, b) for b in grid]
            stops.append((n, settled.is_settled(vs)))
            agree.append(all(agrees(g, t) for g, t in zip(gaps, true_gaps, strict=True) if t is not None))
        done = [a for (_, ok), a in zip(stops, agree, strict=True) if ok]
        default = (settled.LAST_SHARE, settled.IMPROVE_DB, settled.MIN_TRIALS, settled.HALVES)
        mark = " (the default)" if (last_share, improve_db, min_trials, halves) == default else ""
        print(f"#   settle {label} from {start}, last {last_share:.0%}, gain <= {improve_db} dB, "
              f">= {min_trials} per budget{', halves agree' if halves else ''}{mark}: "
              f"{len(done)}/{len(stops)} settle by {SETTLE_CAP} (median stop "
              f"{statistics.median(n for n, _ in stops):.0f}/family); answer agrees at every budget in "
              f"{np.mean(done) if done else float('nan'):.0%} of the settled, {np.mean(agree):.0%} of all",
              flush=True)


if __name__ == "__main__":
    main()
