"""Record real learning curves (validation PSNR after every epoch, on the full split and on subsets).

Configurations are drawn from the default search space with a seeded Optuna RandomSampler (one
study per family, families interleaved so a cut-short run stays balanced) and trained with
hgsearch.training.loop.train on a reduced training set. After every epoch the model is evaluated with
hgsearch.training.loop.evaluate on the whole validation split and on its first 1024/2048/5120 rows (the
fixed subsets `epoch_eval_split` gives), each timed, so one run measures both the subset noise and
the curves that bench/pruning_replay.py replays. The CSV is rewritten after every configuration.

    .venv/bin/python bench/curves_record.py --per-family 8 --epochs 8 --train-size 10000
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import torch

from hgsearch.config import SpaceConfig
from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.model.families import build
from hgsearch.model.space import sample
from hgsearch.training.loop import epoch_eval_split, evaluate, train

SUBSETS = (1024, 2048, 5120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--budget", type=int, default=3_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/curves-fmnist.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    data = prepare(load_dataset("fashion-mnist"), "superres", train_size=args.train_size)
    subsets = {n: epoch_eval_split(data.val, n) for n in SUBSETS}
    studies = {f: optuna.create_study(directions=["minimize", "maximize"],
                                      sampler=optuna.samplers.RandomSampler(seed=args.seed))
               for f in ("hourglass", "conventional")}
    rows: list[dict] = []
    header = (f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  {platform.node()}  "
              f"{platform.processor() or platform.machine()}  torch {torch.__version__}  threads {args.threads}\n"
              f"# command: python {' '.join(sys.argv)}\n"
              f"# fashion-mnist superres, budget {args.budget:,}, train_size {args.train_size}, "
              f"val {len(data.val)}, default space, RandomSampler seed {args.seed}, training seed = config\n")
    out = Path(args.out)
    for k in range(args.per_family):
        for family, study in studies.items():
            trial = study.ask()
            spec, lr = sample(trial, family, args.budget, data.d_in, data.d_out, SpaceConfig(), False)
            probe = build(spec)  # a second model to evaluate the epoch's weights without touching training
            mark = [time.perf_counter()]
            cfg = {"family": family, "config": k, "params": spec.params, "width": spec.width,
                   "bottleneck": spec.bottleneck, "depth": spec.depth, "lr": lr}

            def on_epoch_end(state: dict, cfg: dict = cfg, probe: torch.nn.Module = probe,
                             mark: list = mark) -> None:
                epoch_s = time.perf_counter() - mark[0]
                probe.load_state_dict(state["model"])
                row = {**cfg, "epoch": state["epoch"], "train_loss": state["loss"], "epoch_seconds": epoch_s}
                t = time.perf_counter()
                row["psnr_val"] = evaluate(probe, data.val)
                row["eval_seconds"] = time.perf_counter() - t
                for n, split in subsets.items():
                    t = time.perf_counter()
                    row[f"psnr_val_{n}"] = evaluate(probe, split)
                    row[f"eval_seconds_{n}"] = time.perf_counter() - t
                rows.append(row)
                mark[0] = time.perf_counter()

            _, result = train(spec, data, lr=lr, epochs=args.epochs, seed=k, on_epoch_end=on_epoch_end)
            rows[-1]["psnr_test"] = result.psnr_test
            wall = time.time() - started
            out.write_text(header + f"# wall so far {wall / 60:.1f} min, {len(rows)} epochs\n"
                           + pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
            print(f"{family} {k} {spec.params:,} lr {lr:.2e}: val {result.psnr_val:.3f} "
                  f"({wall / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
