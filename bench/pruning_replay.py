"""Replay recorded learning curves through hgsearch.search.pruning.Pruner: compute spent vs frontier kept.

Trials arrive one at a time in a random order (one worker, asynchronous halving); each trains epoch
by epoch and at every rung hgsearch.search.pruning.Pruner.decide (the search's own code) sees the curves
recorded so far. For every setting it prints, over --orders random arrival orders: the fraction of
the epochs full training spends, how many points of each family's full-training Pareto front
(parameters, final validation PSNR) finish training, how often the whole front survives, and how
often the best final model survives.

    .venv/bin/python bench/pruning_replay.py bench/curves-fmnist.csv
"""

from __future__ import annotations

import argparse
import itertools
import random

import pandas as pd

from hgsearch.search.pruning import Observation, Pruner, front_ranks


def load(path: str, column: str) -> dict[str, list[Observation]]:
    df = pd.read_csv(path, comment="#").sort_values(["family", "config", "epoch"])
    out: dict[str, list[Observation]] = {}
    for (family, config), g in df.groupby(["family", "config"], sort=True):
        out.setdefault(family, []).append(
            Observation(family, int(config), int(g["params"].iloc[0]), tuple(g[column].astype(float))))
    return out


def replay(trials: list[Observation], pruner: Pruner, order: list[int]) -> tuple[int, set[int]]:
    """Epochs trained and keys of the trials that finished, for one arrival order."""
    recorded: list[Observation] = []
    spent, finished = 0, set()
    for i in order:
        t = trials[i]
        reached = len(t.curve)
        for epoch in range(1, len(t.curve) + 1):
            seen = Observation(t.family, t.key, t.params, t.curve[:epoch])
            if pruner.decide(seen, epoch, recorded).stop:
                reached = epoch
                break
        spent += reached
        if reached == len(t.curve):
            finished.add(t.key)
        recorded.append(Observation(t.family, t.key, t.params, t.curve[:reached]))
    return spent, finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--column", default="psnr_val", help="which PSNR column the pruner sees")
    ap.add_argument("--orders", type=int, default=200)
    args = ap.parse_args()
    families = load(args.csv, args.column)
    truth = load(args.csv, "psnr_val")  # the frontier is always judged on full-split final PSNR
    epochs = {len(o.curve) for obs in families.values() for o in obs}
    assert len(epochs) == 1, f"curves of unequal length {epochs}: record them with one --epochs"
    max_epochs = epochs.pop()
    fronts = {}
    for f, obs in truth.items():
        ranks = front_ranks([(o.params, o.curve[-1]) for o in obs])
        fronts[f] = {o.key for o, r in zip(obs, ranks, strict=True) if r == 0}
    best = {f: max(obs, key=lambda o: o.curve[-1]).key for f, obs in truth.items()}
    n = sum(len(v) for v in families.values())
    print(f"# {args.csv}: {n} configurations ({', '.join(f'{f} {len(v)}' for f, v in families.items())}), "
          f"{max_epochs} epochs; pruner sees {args.column}; {args.orders} random arrival orders")
    print(f"# full-training fronts: {', '.join(f'{f} {sorted(k)}' for f, k in fronts.items())}")
    print("| rule | min_epochs | margin dB | min_peers | rungs | epochs spent | front points kept "
          "| whole front kept | best kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = random.Random(0)
    orders = {f: [rng.sample(range(len(v)), len(v)) for _ in range(args.orders)] for f, v in families.items()}
    grid = [("none", 1, 0.0, 4)] + list(itertools.product(
        ("pareto-asha", "psnr-bins"), (1, 2, 3), (0.0, 0.1, 0.25, 0.5), (2, 3, 4)))
    for rule, min_epochs, margin, min_peers in grid:
        pruner = Pruner(rule, min_epochs, 3, max_epochs, margin, min_peers)
        spent = kept = whole = best_kept = 0
        for k in range(args.orders):
            all_kept = True
            for f, obs in families.items():
                s, done = replay(obs, pruner, orders[f][k])
                spent += s
                kept += len(fronts[f] & done)
                all_kept &= fronts[f] <= done
                best_kept += best[f] in done
            whole += all_kept
        total_front = sum(len(v) for v in fronts.values()) * args.orders
        print(f"| {rule} | {min_epochs} | {margin} | {min_peers} | {','.join(map(str, pruner.rungs)) or '-'} "
              f"| {spent / (n * max_epochs * args.orders):.0%} | {kept / total_front:.0%} "
              f"| {whole / args.orders:.0%} | {best_kept / (len(families) * args.orders):.0%} |")


if __name__ == "__main__":
    main()
