"""A real hgsearch search on one GPU, serial loop vs packs: trials per hour, exact counts, PSNR agreement.

    PYTHONPATH=$PWD python3 bench/gpu_search.py --data-dir .gpu/data/fashion-mnist   # CUDA: about 6 minutes
    PYTHONPATH=$PWD python3 bench/gpu_search.py --quick                               # CPU smoke test, ~1 minute

Two searches (serial, then packed) of the same study settings (Fashion-MNIST x2 super-resolution, budget 3M, both
families, --trials per family, --epochs each, seed 0), each in a fresh results directory, through
hgsearch.search.run.run_search exactly as `hgsearch run` calls it:
  serial  pack_size 1 (one train.train at a time), stopped at --serial-seconds (it would take far
          longer): trials/hour from the trials it completed in that time.
  packed  pack_size 0 (auto: K and the grouping from the device's memory and the shapes), stopped
          at --packed-seconds if not done; reports whether each family ended with exactly
          --trials COMPLETE trials and nothing RUNNING or WAITING.
trials/hour = COMPLETE trials / wall time of the search call (data loading, graph captures,
checkpoints and evaluation included). The first 10 trials of each family are TPE's random
start-up, seeded per trial number in both runs, so they are the same configurations: the largest
|psnr_val difference| over those both runs completed is the packed path's agreement with serial.
Fail-soft: an error in one search is recorded and the next runs. Writes --json (default
$OUT/gpu_search.json) after each search. On a machine without CUDA (and without --quick) it says so
and exits 0.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from hgsearch.config import RunConfig, parse_budget
from hgsearch.events import Event, TrialEnd
from hgsearch.search.run import run_search
from hgsearch.stop import request_stop, stop_on_signals
from hgsearch.store.schema import family_study_name


def write_tiny_idx(root: Path, n_train: int = 600, n_test: int = 200, side: int = 12) -> Path:
    """Blurry-blob images in the four IDX files `--dataset idx` reads (the --quick data)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:side, 0:side] / side
        labels = rng.integers(0, 10, n)
        cx, cy = (labels % 5 + 0.5) / 5, (labels // 5 + 0.5) / 2
        img = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / 0.02)
        img = (np.clip(img + rng.uniform(0, 0.2, img.shape), 0, 1) * 255).astype(np.uint8)
        for kind, arr in (("images-idx3", img), ("labels-idx1", labels.astype(np.uint8))):
            header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (root / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    return root


def search_once(name: str, cfg: RunConfig, cap: float) -> dict:
    """Run one search, stopped after cap seconds; its trials per hour and final state counts."""
    ends = [0]

    def reporter(ev: Event) -> None:
        if isinstance(ev, TrialEnd):
            ends[0] += 1
            a = ev.trial.user_attrs
            print(f"  {name} {ev.family:12s} #{ev.trial.number:3d} {ev.trial.state.name:8s} "
                  f"psnr_val {a.get('psnr_val', float('nan')):.3f} params {a.get('params', 0):>9,} "
                  f"{ev.reason or ''}", flush=True)

    row: dict = {"search": name, "pack_size": cfg.pack_size, "cap_s": cap}
    timer = threading.Timer(cap, request_stop, args=("SIGALRM",))
    t0 = time.perf_counter()
    try:
        with stop_on_signals():
            timer.start()
            try:
                run_search(cfg, reporter)
                row["stopped_at_cap"] = False
            except KeyboardInterrupt:
                row["stopped_at_cap"] = True
    except Exception as e:  # fail-soft: record it, let the other search run
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()[-3000:]
        print(row["traceback"], file=sys.stderr, flush=True)
    finally:
        timer.cancel()
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    counts, psnr = {}, {}
    for fam in cfg.families:
        try:
            trials = optuna.load_study(study_name=family_study_name(cfg.study_name, fam),
                                       storage=cfg.storage_url).get_trials()
        except Exception as e:
            counts[fam] = {"error": str(e)}
            continue
        counts[fam] = {s.name: sum(t.state == s for t in trials) for s in TrialState
                       if any(t.state == s for t in trials)}
        psnr[fam] = {t.number: [t.params, t.user_attrs["psnr_val"], t.user_attrs.get("seconds")]
                     for t in trials if t.state == TrialState.COMPLETE}
    done = sum(len(p) for p in psnr.values())
    row["states"] = counts
    row["complete"] = done
    row["trials_per_hour"] = round(done / row["wall_s"] * 3600, 1) if row["wall_s"] else None
    row["exact_counts"] = all(c.get("COMPLETE") == cfg.trials and not c.get("RUNNING") and not c.get("WAITING")
                              for c in counts.values())
    row["_psnr"] = psnr
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="Fashion-MNIST's four IDX files")
    ap.add_argument("--budget", default="3M")
    ap.add_argument("--trials", type=int, default=24, help="per family")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--packed-seconds", type=float, default=210.0)
    ap.add_argument("--serial-seconds", type=float, default=100.0)
    ap.add_argument("--quick", action="store_true", help="tiny generated data on the CPU, packs of 2")
    ap.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_search.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu_search-"))
    info = {"python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "cuda": torch.cuda.is_available()}
    if args.quick:
        base = dict(dataset="idx", data_dir=str(write_tiny_idx(work / "idx")), budget=100_000, trials=3, epochs=1,
                    device="cpu")
        packed_size = 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device here: nothing to measure (use --quick for a CPU dry run)")
            return 0
        if not args.data_dir:
            ap.error("--data-dir is required (Fashion-MNIST's IDX files)")
        info["device"] = torch.cuda.get_device_name()
        base = dict(dataset="fashion-mnist", data_dir=args.data_dir, budget=parse_budget(args.budget),
                    trials=args.trials, epochs=args.epochs, device="cuda")
        packed_size = 0
    base.update(task="superres", family="both", seed=0, study="bench")
    out = {"info": info, "settings": {k: v for k, v in base.items() if k != "data_dir"}, "rows": []}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))

    rows = {}
    # Serial first: the packed search's first CUDA graph capture then meets an initialised cuBLAS (see
    # packed.PackStep._capture for the first-capture failure seen on an H200).
    for name, size, cap in (("serial", 1, args.serial_seconds), ("packed", packed_size, args.packed_seconds)):
        print(f"{name}: pack_size {size}, stopped after {cap:.0f} s", flush=True)
        cfg = RunConfig(**base, pack_size=size, results_dir=str(work / name))
        rows[name] = search_once(name, cfg, cap)
        out["rows"].append({k: v for k, v in rows[name].items() if k != "_psnr"})
        save()

    # Same trial numbers within TPE's start-up are the same configurations in both runs.
    diffs = []
    for fam, serial in rows["serial"]["_psnr"].items():
        for number, (params, psnr, _) in serial.items():
            other = rows["packed"]["_psnr"].get(fam, {}).get(number)
            if number < 10 and other and other[0] == params:
                diffs.append(abs(other[1] - psnr))
    out["agreement"] = {"compared": len(diffs), "max_abs_dpsnr_val": max(diffs) if diffs else None}
    tph = [rows[n].get("trials_per_hour") for n in ("packed", "serial")]
    out["speedup"] = round(tph[0] / tph[1], 2) if all(tph) else None
    save()
    print(json.dumps({"packed": {k: rows["packed"].get(k) for k in ("trials_per_hour", "exact_counts", "states",
                                                                    "wall_s", "error")},
                      "serial": {k: rows["serial"].get(k) for k in ("trials_per_hour", "complete", "wall_s", "error")},
                      "speedup": out["speedup"], "agreement": out["agreement"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
