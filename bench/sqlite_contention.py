"""Hammer one SQLite study from N processes (ask, 8 user attrs, tell; no training) and count lock errors.

Modes: default (a plain URL: SQLAlchemy's 5 s busy timeout, rollback journal), timeout60 (60 s busy
timeout), hgsearch (storage.make_storage: WAL + 60 s busy timeout + heartbeats). The sampler is TPE,
as in a search, so every ask reads the whole study while other processes write.
Usage: .venv/bin/python bench/sqlite_contention.py --workers 2 4 8 --seconds 30
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import traceback
from pathlib import Path

import optuna

from hgsearch.search.sampler import STARTUP_TRIALS

optuna.logging.set_verbosity(optuna.logging.ERROR)


def storage(url: str, mode: str) -> optuna.storages.BaseStorage | str:
    if mode == "default":
        return url  # what search.py passes today: SQLAlchemy's default 5 s busy timeout
    if mode == "timeout60":  # busy timeout only, rollback journal
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if mode == "hgsearch":  # what storage.make_storage builds: WAL, 60 s busy timeout, heartbeats
        from hgsearch.store.storage import make_storage

        return make_storage(url)
    raise SystemExit(f"unknown mode {mode}")


def worker(url: str, mode: str, n: int, seconds: float, q: mp.Queue) -> None:
    ok = locked = other = 0
    first = ""
    t_end = time.monotonic() + seconds
    study = None
    while time.monotonic() < t_end:
        try:
            if study is None:
                study = optuna.create_study(study_name="s", storage=storage(url, mode),
                                            directions=["minimize", "maximize"], load_if_exists=True,
                                            sampler=optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS))
            t = study.ask()
            x = t.suggest_float("x", 0, 1)
            for i in range(8):
                t.set_user_attr(f"a{i}", i)
            study.tell(t, [x, 1 - x])
            ok += 1
        except Exception as e:  # count, keep going: the point is how often this happens
            if "locked" in str(e):
                locked += 1
            else:
                other += 1
                first = first or traceback.format_exception_only(e)[-1].strip()
    q.put((ok, locked, other, first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--modes", nargs="+", default=["default", "timeout60", "hgsearch"])
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    for mode in a.modes:
        for n in a.workers:
            with tempfile.TemporaryDirectory() as d:
                url = f"sqlite:///{Path(d) / 'study.db'}"
                optuna.create_study(study_name="s", storage=storage(url, mode), directions=["minimize", "maximize"])
                q = ctx.Queue()
                ps = [ctx.Process(target=worker, args=(url, mode, n, a.seconds, q)) for _ in range(n)]
                for p in ps:
                    p.start()
                res = [q.get() for _ in ps]
                for p in ps:
                    p.join()
                ok, locked, other = (sum(r[i] for r in res) for i in range(3))
                first = next((r[3] for r in res if r[3]), "")
                print(f"mode={mode:9s} workers={n} seconds={a.seconds:.0f} trials={ok} ({ok / a.seconds:.1f}/s) "
                      f"locked={locked} other_errors={other} {first}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
