"""Record a table of real learning curves on the CPU: validation PSNR after every epoch, resumable.

One tool, two protocols (each a preset of the options below; any option overrides it):

    nice -n 19 .venv/bin/python bench/curves_record.py --protocol search    # search-quality table
    nice -n 19 .venv/bin/python bench/curves_record.py --protocol pruning   # early-stopping table

  search   Fashion-MNIST x2 super-resolution, budget 3M, 6,000 training images, 12 epochs, 150
           configurations per family: the table bench/search_quality.py replays searches against.
  pruning  the same task on the full 50,000 training images, budget 5M (the default run's), 12 epochs,
           24 per family: the table bench/pruning_replay.py decides the pruner's default on.

Configurations are drawn the way a search draws them: hgsearch.model.space.sample on an Optuna
RandomSampler (seeded, one study per family, families interleaved so a cut-short table stays
balanced and is still an unbiased draw). Each is trained with hgsearch.training.loop.train, the
search's own training function (AdamW, linear decay to zero over --epochs, training seed --seed).
After every epoch the weights are scored on the whole validation split (psnr_val) and on its first
2,048 rows (psnr_val_2048, the search's per-epoch subset); test PSNR after the last epoch.

Resumable: the CSV (--out) is rewritten atomically after every configuration; a rerun with the same
options skips the configurations it holds and goes on with the next of the same draw (a run with
other options refuses to touch it). One torch thread by default, so it can run in the background
while the other core works. Columns: family, config, params, depth, width, bottleneck, lr, and the
sampler's coordinates (p_depth, p_size, p_width_pos, p_lr: what a sampler is told), epoch,
train_loss, psnr_val, psnr_val_2048, psnr_test (last epoch only), seconds (training and evaluation
of that epoch).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import torch

from hgsearch.config import SpaceConfig
from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.model.families import ArchSpec, build
from hgsearch.model.space import sample
from hgsearch.training.loop import epoch_eval_split, evaluate, train

EPOCH_EVAL = 2048  # RunConfig.epoch_eval_size: the rows the pruner sees after each epoch

PROTOCOLS = {
    "search": {"train_size": 6000, "epochs": 12, "budget": 3_000_000, "per_family": 150,
               "out": "bench/curves-search-cpu.csv"},
    "pruning": {"train_size": 0, "epochs": 12, "budget": 5_000_000, "per_family": 24,
                "out": "bench/curves-full-cpu.csv"},
}
SETTINGS = ("dataset", "task", "train_size", "epochs", "budget", "seed")  # what defines a table: resume needs equal


def draw(n: int, budget: int, d_in: int, d_out: int, seed: int) -> list[tuple[str, int, ArchSpec, float, dict]]:
    """n configurations per family of the default space: (family, index, spec, lr, sampler coordinates)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {f: optuna.create_study(directions=["minimize", "maximize"],
                                      sampler=optuna.samplers.RandomSampler(seed=seed))
               for f in ("hourglass", "conventional")}
    out = []
    for k in range(n):
        for family, study in studies.items():
            trial = study.ask()
            spec, lr = sample(trial, family, budget, d_in, d_out, SpaceConfig(), False)
            out.append((family, k, spec, lr, dict(trial.params)))
    return out


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_table(path: Path) -> tuple[dict[str, str], pd.DataFrame | None]:
    """The settings line and rows of an existing table (empty when there is none)."""
    if not path.exists():
        return {}, None
    settings = {}
    for line in path.read_text().splitlines():
        if line.startswith("# settings:"):
            settings = dict(kv.split("=", 1) for kv in line.removeprefix("# settings:").split())
    return settings, pd.read_csv(path, comment="#")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="search")
    ap.add_argument("--per-family", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--train-size", type=int, help="0: the whole training split")
    ap.add_argument("--budget", type=int)
    ap.add_argument("--seed", type=int, default=0, help="of the draw and of every training run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--hours", type=float, default=0.0, help="stop cleanly after this long (0: when done)")
    args = ap.parse_args()
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = {"dataset": "fashion-mnist", "task": "superres", "train_size": str(args.train_size),
                "epochs": str(args.epochs), "budget": str(args.budget), "seed": str(args.seed)}
    old, table = read_table(out)
    if old and {k: old.get(k) for k in SETTINGS} != settings:
        sys.exit(f"{out} was recorded with {old}, not {settings}: pass its options or another --out")
    rows = [] if table is None else table.to_dict("records")
    done = set() if table is None else {(f, int(c)) for (f, c), g in table.groupby(["family", "config"])
                                        if len(g) == args.epochs}
    rows = [r for r in rows if (r["family"], int(r["config"])) in done]
    spent = sum(r["seconds"] for r in rows)

    data = prepare(load_dataset(settings["dataset"]), settings["task"], train_size=args.train_size)
    subset = epoch_eval_split(data.val, EPOCH_EVAL)
    plan = draw(args.per_family, args.budget, data.d_in, data.d_out, args.seed)
    started = time.time()
    for family, k, spec, lr, coords in plan:
        if (family, k) in done:
            continue
        if args.hours and time.time() - started > args.hours * 3600:
            print(f"stopping after {args.hours} h; rerun the same command to go on", flush=True)
            break
        probe = build(spec)  # scores the epoch's weights without touching the training model
        config = {"family": family, "config": k, "params": spec.params, "depth": spec.depth, "width": spec.width,
                  "bottleneck": spec.bottleneck, "lr": lr,
                  **{f"p_{name}": coords.get(name, float("nan")) for name in ("depth", "size", "width_pos", "lr")}}
        new: list[dict] = []
        mark = [time.perf_counter()]

        def on_epoch_end(state: dict, config: dict = config, probe: torch.nn.Module = probe,
                         new: list = new, mark: list = mark) -> None:
            probe.load_state_dict(state["model"])
            new.append({**config, "epoch": state["epoch"], "train_loss": state["loss"],
                        "psnr_val": evaluate(probe, data.val), "psnr_val_2048": evaluate(probe, subset),
                        "psnr_test": float("nan"), "seconds": time.perf_counter() - mark[0]})
            mark[0] = time.perf_counter()

        _, result = train(spec, data, lr=lr, epochs=args.epochs, seed=args.seed, on_epoch_end=on_epoch_end)
        new[-1]["psnr_test"] = result.psnr_test
        rows += new
        spent += sum(r["seconds"] for r in new)
        header = (f"# settings: {' '.join(f'{k}={v}' for k, v in settings.items())}\n"
                  f"# command: python {' '.join(sys.argv)}\n"
                  f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
                  f"torch {torch.__version__}, {args.threads} torch thread(s)\n"
                  f"# last written: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
                  f"{len(rows) // args.epochs} of {len(plan)} configurations, {spent / 3600:.2f} h of recording\n")
        write_atomic(out, header + pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
        print(f"{family} {k} {spec.params:,} L{spec.depth} {spec.width}x{spec.bottleneck} lr {lr:.2e}: "
              f"val {result.psnr_val:.3f} in {sum(r['seconds'] for r in new):.0f} s", flush=True)


if __name__ == "__main__":
    main()
