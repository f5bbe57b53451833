"""Record a table of real learning curves on one GPU: 100+ default-space configurations x 20 epochs in packs.

    PYTHONPATH=$PWD python3 bench/curves_table.py --data-dir .gpu/data/fashion-mnist --limit 200   # CUDA
    PYTHONPATH=$PWD python3 bench/curves_table.py --quick                                        # CPU, seconds

The table issue 11's search-efficiency benchmark replays (bench/search_replay.py). Configurations are
drawn from the default search space (hgsearch.model.space.sample, budget 3M, both families alternating, one
in-memory Optuna study per family with RandomSampler(seed)), for Fashion-MNIST x2 super-resolution on
a reduced training set (--train-size, stated in the CSV header), and trained with
hgsearch.training.packed.train_packed in heterogeneous packs (hgsearch.training.packing.plan_packs, K and memory from
pack_limits): every member gets loop.train's schedule (AdamW, linear decay to zero over --epochs)
and the one training seed of a pack (--seed; the search also trains all trials with one seed). After
every epoch the whole pack is evaluated with evaluate_packed: validation PSNR on the full split and
on its first 2048 rows (the search's per-epoch subset), and test PSNR.

Time: configurations are trained in rounds. The first round has --first-round configurations; each
later round is sized from the seconds per configuration measured so far to fit what is left of
--limit, so the run ends with as many complete configurations as the limit allows (rounds are drawn
in order, so a cut-short table is still an unbiased draw). A watchdog ends the process at --limit.
The CSV ($OUT/curves-table.csv, or --out) is rewritten atomically after every epoch of every pack, so
a killed run keeps what finished; configurations with fewer than --epochs rows are incomplete.
Columns: family, config, params, depth, width, bottleneck, lr, pack, epoch, train_loss, psnr_val,
psnr_val_2048, psnr_test, seconds (the pack's wall seconds at that epoch's end, evaluation included).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import optuna
import pandas as pd
import torch

from hgsearch.config import SpaceConfig
from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import Split, TaskData, prepare
from hgsearch.errors import TrialFailed
from hgsearch.model.families import ArchSpec
from hgsearch.model.space import sample, size_range
from hgsearch.training.packed import PackedMLP, evaluate_packed, train_packed
from hgsearch.training.packing import pack_limits, plan_packs

EPOCH_EVAL = 2048  # the search's per-epoch subset (RunConfig.epoch_eval_size); a multiple of 128, see evaluate
FULL_TRAIN = 50_000  # Fashion-MNIST's training images after the 10k validation split
SAFETY = 0.85  # a later round is sized to this fraction of the time left (small packs run less efficiently)


def draw(n: int, budget: int, d_in: int, d_out: int, seed: int) -> list[tuple[str, ArchSpec, float]]:
    """n configurations of the default space, families alternating, RandomSampler(seed) per family."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    families = [f for f in ("hourglass", "conventional") if size_range(f, d_in, d_out, budget, SpaceConfig())]
    studies = {f: optuna.create_study(directions=["minimize", "maximize"],
                                      sampler=optuna.samplers.RandomSampler(seed=seed)) for f in families}
    out = []
    for i in range(n):
        family = families[i % len(families)]
        spec, lr = sample(studies[family].ask(), family, budget, d_in, d_out, SpaceConfig(), False)
        out.append((family, spec, lr))
    return out


def evaluate(model: PackedMLP, val_head: Split, val_rest: Split | None, test: Split) -> tuple[list, list, list]:
    """(full validation, first 2048 validation rows, test) PSNR per member.

    The full split is scored as its head and its rest: evaluate_packed averages per batch of 128 and
    2048 is a multiple of 128, so the size-weighted mean of the two equals the full-split PSNR (up to
    float rounding) without evaluating the head twice.
    """
    head = evaluate_packed(model, val_head)
    test_psnr = evaluate_packed(model, test)
    if val_rest is None:
        return head, head, test_psnr
    rest = evaluate_packed(model, val_rest)
    n, m = len(val_head.inputs), len(val_rest.inputs)
    full = [(n * a + m * b) / (n + m) for a, b in zip(head, rest, strict=True)]
    return full, head, test_psnr


class Table:
    """The rows so far, rewritten atomically (header + CSV) after every epoch."""

    def __init__(self, path: Path, header: list[str], t0: float) -> None:
        self.path, self.header, self.rows, self.t0 = path, header, [], t0

    def write(self, epochs: int) -> None:
        df = pd.DataFrame(self.rows)
        done = int((df.groupby("config")["epoch"].max() >= epochs).sum()) if len(df) else 0
        lines = [*self.header, f"wall time {time.perf_counter() - self.t0:.1f} s, {done} configurations "
                               f"with all {epochs} epochs, {len(self.rows)} rows"]
        text = "".join(f"# {line}\n" for line in lines) + df.to_csv(index=False, float_format="%.6g")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)


def train_pack(table: Table, configs: list[tuple[int, str, ArchSpec, float]], data: TaskData, splits: tuple,
               args: argparse.Namespace, device: torch.device, pack_id: int) -> None:
    """Train one pack for args.epochs, appending each live member's row after every epoch."""
    t0 = time.perf_counter()
    losses: dict[int, float] = {}

    def on_epoch(i: int, epoch: int, metrics: dict) -> bool:
        losses[i] = metrics["loss"]  # only live members get here: a diverged one is retired before
        return True

    def on_pack_epoch(model: PackedMLP, epoch: int) -> None:
        full, head, test = evaluate(model, *splits)
        seconds = time.perf_counter() - t0
        for i in sorted(losses):
            cid, family, spec, lr = configs[i]
            table.rows.append({"family": family, "config": cid, "params": spec.params, "depth": spec.depth,
                               "width": spec.width, "bottleneck": spec.bottleneck, "lr": lr, "pack": pack_id,
                               "epoch": epoch, "train_loss": losses[i], "psnr_val": full[i],
                               "psnr_val_2048": head[i], "psnr_test": test[i], "seconds": seconds})
        losses.clear()
        table.write(args.epochs)

    _, results = train_packed([c[2] for c in configs], data, lrs=[c[3] for c in configs], epochs=args.epochs,
                              seed=args.seed, device=device, on_epoch=on_epoch, on_pack_epoch=on_pack_epoch)
    failed = sum(isinstance(r, TrialFailed) for r in results)
    print(f"  pack {pack_id}: {len(configs)} members ({failed} failed), {time.perf_counter() - t0:.1f} s, "
          f"{time.perf_counter() - table.t0:.0f} s so far", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="Fashion-MNIST's four IDX files")
    ap.add_argument("--limit", type=float, default=200.0, help="seconds for the whole run; rounds are sized to fit")
    ap.add_argument("--configs", type=int, default=160, help="most configurations (as many as fit --limit)")
    ap.add_argument("--first-round", type=int, default=50, help="configurations in the first round")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-size", type=int, default=6000, help=f"training images (full: {FULL_TRAIN})")
    ap.add_argument("--budget", type=int, default=3_000_000)
    ap.add_argument("--seed", type=int, default=0, help="RandomSampler seed and training seed")
    ap.add_argument("--pack-size", type=int, default=None, help="most members per pack (default: from memory)")
    ap.add_argument("--quick", action="store_true", help="tiny generated data on the CPU: 6 configurations x 3 epochs")
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT/curves-table.csv, else ./curves-table.csv")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or Path(os.environ.get("OUT", ".")) / "curves-table.csv"
    if args.quick:
        from gpu_search import write_tiny_idx  # bench/ is on sys.path when this runs as a script

        dataset = load_dataset("idx", write_tiny_idx(Path(tempfile.mkdtemp(prefix="curves_table-")) / "idx"))
        args.budget, args.configs, args.first_round, args.epochs, args.train_size = 100_000, 6, 6, 3, 300
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device here: nothing to record (use --quick for a CPU dry run)")
            return 0
        if not args.data_dir:
            ap.error("--data-dir is required (Fashion-MNIST's IDX files)")
        dataset = load_dataset("fashion-mnist", args.data_dir)
        device = torch.device("cuda")
    # A hard stop at the limit, whatever a CUDA call is doing: the CSV already holds every finished epoch.
    watchdog = threading.Timer(args.limit, lambda: (print("time limit: exiting; the CSV holds every finished "
                                                          "epoch", flush=True), os._exit(0)))
    watchdog.daemon = True
    watchdog.start()

    data = prepare(dataset, "superres", train_size=args.train_size, device=device)
    val = data.val
    head = Split(val.inputs[:EPOCH_EVAL], val.targets[:EPOCH_EVAL])
    rest = Split(val.inputs[EPOCH_EVAL:], val.targets[EPOCH_EVAL:]) if len(val) > EPOCH_EVAL else None
    splits = (head, rest, data.test)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    table = Table(out, [
        f"command: python {' '.join(sys.argv)}",
        f"machine: {gpu} on {platform.node()}, torch {torch.__version__}, device {device}",
        f"date: {started:%Y-%m-%d %H:%M} UTC",
        f"data: {dataset.name} x2 super-resolution, train_size {len(data.train)} (reduced from the full "
        f"{FULL_TRAIN} to fit the time), val {len(val)} (psnr_val_2048: its first {EPOCH_EVAL} rows), "
        f"test {len(data.test)}",
        f"configurations: default space, budget {args.budget:,}, both families alternating, RandomSampler "
        f"seed {args.seed} per family; {args.epochs} epochs, linear decay over them, training seed {args.seed}, "
        f"heterogeneous packs (hgsearch.training.packed.train_packed)",
    ], t0)
    table.write(args.epochs)
    configs = [(i, *c) for i, c in enumerate(draw(args.configs, args.budget, data.d_in, data.d_out, args.seed))]
    print(f"# {table.header[1]}; limit {args.limit:.0f} s; up to {len(configs)} configurations", flush=True)
    max_k, max_bytes = pack_limits(device, args.pack_size)
    done, pack_id, size = 0, 0, min(args.first_round, len(configs))
    rounds_t0 = time.perf_counter()
    while size > 0:
        batch = configs[done:done + size]
        packs = plan_packs([c[2] for c in batch], max_k, max_bytes=max_bytes)
        print(f"round: configurations {done}-{done + len(batch) - 1} in {len(packs)} packs", flush=True)
        for p in packs:
            try:
                train_pack(table, [batch[i] for i in p], data, splits, args, device, pack_id)
            except Exception as e:  # fail soft: a pack that breaks loses its members, not the table
                print(f"  pack {pack_id} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                traceback.print_exc(limit=3)
            pack_id += 1
            if device.type == "cuda":
                torch.cuda.empty_cache()
        done += len(batch)
        per_config = (time.perf_counter() - rounds_t0) / done
        left = args.limit - (time.perf_counter() - table.t0)
        size = min(len(configs) - done, math.floor(SAFETY * left / per_config))
    table.write(args.epochs)
    print(f"{done} configurations trained in {time.perf_counter() - table.t0:.0f} s; CSV: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
