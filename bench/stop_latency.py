"""Ctrl-C latency of a running search: SIGINT mid-epoch on a ~5M Hourglass, time until the process has exited.

Each round starts a search process (one trial, its model pinned to ~5M parameters through the search
space), waits for its first progress report (so training is under way), waits a random 0-3 s more (a
random point within a step), sends SIGINT and times the exit. With --tree naming another source tree
(a directory holding an `hgsearch` package, e.g. an older commit's, from `git archive`) the same
rounds run against that code too, interleaved, so a before/after comparison shares the machine's load.

    git archive <commit> hgsearch | tar -x -C /tmp/before
    .venv/bin/python bench/stop_latency.py --tree /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys, time
from hgsearch.stop import stop_on_signals
from hgsearch.config import RunConfig
from hgsearch.search.run import run_search
from hgsearch.config import SpaceConfig

cfg = RunConfig(budget=5_000_000, task="superres", dataset="fashion-mnist", family="hourglass", trials=1,
                epochs=1, train_size=int(sys.argv[2]), results_dir=sys.argv[1], device="cpu",
                space=SpaceConfig(hourglass_depth=(8, 8), ratio=(0.1, 0.1), lr=(1e-3, 1e-3), min_fraction=1.0))
t = {}

def reporter(event, info):
    if event == "trial_start":
        t["start"], t["params"] = time.perf_counter(), info["spec"].params
    elif event == "progress" and "reported" not in t:
        t["reported"] = 1
        step_s = (time.perf_counter() - t["start"]) / info["step"]
        os.write(2, f"PROGRESS params={t['params']} step={info['step']} step_s={step_s:.4f}\n".encode())

try:
    with stop_on_signals():
        run_search(cfg, reporter=reporter)
except KeyboardInterrupt:
    sys.exit(130)
"""


HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_round(tree: str, train_size: int, rng: random.Random) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as results:
        # PYTHONPATH comes before the editable install, so `tree`'s hgsearch is the one imported; cwd is
        # elsewhere because `python -c` would import from the working directory first.
        p = subprocess.Popen([sys.executable, "-c", CHILD, results, str(train_size)], stderr=subprocess.PIPE,
                             text=True, cwd=results, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": tree})
        line, seen = "", []
        while not line.startswith("PROGRESS"):
            line = p.stderr.readline()
            seen.append(line)
            if not line and p.poll() is not None:
                raise SystemExit(f"{tree}: the search ended (exit code {p.returncode}) before its first "
                                 f"progress report; its stderr ends:\n{''.join(seen[-15:])}")
        info = dict(kv.split("=") for kv in line.split()[1:])
        time.sleep(rng.uniform(0, 3))
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=300)
        return {"latency_s": time.perf_counter() - t0, "step_s": float(info["step_s"]),
                "params": float(info["params"]), "code": float(p.returncode)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another source tree to compare (repeatable)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--train-size", type=int, default=30_000,
                    help="images per epoch (>= 25,600: the search reports every 50 steps)")
    args = ap.parse_args()
    trees = [*args.tree, HERE]
    rng = random.Random(0)
    results: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  load avg {os.getloadavg()[0]:.2f}  "
          f"cores {os.cpu_count()}")
    for r in range(args.rounds):
        for tree in trees:
            res = one_round(tree, args.train_size, rng)
            results[tree].append(res)
            print(f"round {r + 1} {tree}: {res['params']:,.0f} params, step {res['step_s']:.3f} s, "
                  f"SIGINT -> exit {res['latency_s']:.2f} s (exit code {res['code']:.0f})", flush=True)
    print("| code | params | step s (median) | SIGINT -> exit s: median [min-max] |")
    print("|---|---|---|---|")
    for tree, rs in results.items():
        lat = [x["latency_s"] for x in rs]
        print(f"| {tree} | {rs[0]['params']:,.0f} | {statistics.median(x['step_s'] for x in rs):.3f} | "
              f"{statistics.median(lat):.2f} [{min(lat):.2f}-{max(lat):.2f}] |")
    print(f"load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
