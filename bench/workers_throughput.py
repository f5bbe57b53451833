"""Trials/hour of `hgsearch run --workers N` on this machine: the same fixed real config for each N.

Usage: .venv/bin/python bench/workers_throughput.py [--workers 1 2] [-- extra run options]
Default config: Fashion-MNIST superres, budget 1.5M, --epochs 1 --trials 4 (per family, so 8 trials).
Reports wall time (process start to exit, including data loading), the span from the first trial's
start to the last trial's end, trials/hour on both, the mean trial time and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)
DEFAULT = ["--budget", "1.5M", "--task", "superres", "--epochs", "1", "--trials", "4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("extra", nargs="*", help="run options replacing the default config")
    a = ap.parse_args()
    opts = a.extra or DEFAULT
    for n in a.workers:
        with tempfile.TemporaryDirectory() as d:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "hgsearch", "run", *opts, "--study", "bench",
                                  "--results-dir", d, "--workers", str(n)], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode:
                sys.exit(res.stderr)
            url = f"sqlite:///{Path(d) / 'bench' / 'study.db'}"
            done = [t for name in optuna.get_all_study_names(url)  # one family only on small budgets
                    for t in optuna.load_study(study_name=name, storage=url).get_trials()
                    if t.state.name == "COMPLETE"]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            mean = sum(t.user_attrs["seconds"] for t in done) / len(done)
            params = sum(t.user_attrs["params"] for t in done) / len(done)
            print(f"workers={n} trials={len(done)} wall={wall:.0f}s ({len(done) / wall * 3600:.0f}/h) "
                  f"span={span:.0f}s ({len(done) / span * 3600:.0f}/h) mean_trial={mean:.1f}s "
                  f"mean_params={params / 1e6:.2f}M load_before={load0:.1f} load_after={os.getloadavg()[0]:.1f} "
                  f"cores={len(os.sched_getaffinity(0))}", flush=True)


if __name__ == "__main__":
    main()
