"""Load test: N simulated workers on one study through a real PostgreSQL (issue 23), training replaced by a timer.

Each simulated worker runs the real search loop (claims.claim_runs, trial.run_trials: heartbeats, the
configuration sampled and stored, checkpoints, epoch_hook's curve writes and rung decisions from the
storage, tells, requeues, reaping of dead workers' trials) with its own retrying storage (its own
connection pool, as a worker process has). Only the training is a stand-in: StandInExecutor, an
Executor (search/trial.py) that sleeps --epoch-seconds per epoch and reports each epoch through the real
TrialRun.epoch_end with a PSNR made up from the configuration, so the pruner has curves to decide on.

Workers are threads inside --max-procs processes (default 10) (each process imports torch through the search code:
about 300 MB, so 200 worker processes would not fit in 24 GB); a process is one "host". Killing 10%
of the workers kills whole processes with SIGKILL at random moments (same host: their trials are seen
dead at once by pid, as on a real host's other workers). One database restart (pg_ctl stop -m fast,
start) mid-run. Prints, per N: finished trials per second, claim / tell / rung-decision latency p50
and p99, peak database connections (pg_stat_activity), database CPU seconds (from /proc of the
postmaster and its children), and the exactness checks.

    .venv/bin/python bench/load_test.py --url postgresql://... --pgdata DIR --workers 10 50 [--pgbouncer]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FAMILIES = ("hourglass", "conventional")
BUDGET = 100_000
D_IN, D_OUT = 36, 144  # superres on 12x12 images: the sampler needs only the sizes


# ---------------------------------------------------------------- worker side (a process of threads)

class StandInExecutor:
    """An Executor whose training is a sleep per epoch; epoch ends go through the real TrialRun.epoch_end."""

    def __init__(self, epoch_seconds: float, rungs: tuple[int, ...], lat: dict[str, list[float]]) -> None:
        self.epoch_seconds, self.rungs, self.lat = epoch_seconds, rungs, lat

    def run(self, runs: list) -> list:
        from hgsearch.stop import check_stop
        from hgsearch.training.loop import TrainResult

        outcomes = []
        for run in runs:
            rec, start = run.record, int(run.resume["epoch"]) if run.resume else 0
            quality = zlib.crc32(repr((rec.width, rec.bottleneck, rec.depth, rec.lr)).encode()) / 2**32
            outcome = None
            for epoch in range(start + 1, rec.epochs + 1):
                time.sleep(self.epoch_seconds)
                check_stop()
                psnr = 18 + 6 * quality - 2 / epoch
                state = {"epoch": epoch, "loss": 0.01, "seconds": epoch * self.epoch_seconds,
                         "psnr_val_epoch": psnr, "model": {}}
                t0 = time.perf_counter()
                keep = run.epoch_end(state)
                if epoch in self.rungs:
                    self.lat["rung"].append(time.perf_counter() - t0)
                if not keep:
                    outcome = run.stopped
                    break
            outcomes.append(outcome or TrainResult(psnr, psnr, 0.01, rec.epochs * self.epoch_seconds, rec.epochs,
                                                   rec.epochs))
        self.lat["executor_end"].append(time.perf_counter())
        return outcomes


def worker_thread(url: str, study: str, a: argparse.Namespace, lat: dict[str, list[float]]) -> None:
    import optuna

    from hgsearch.config import RunConfig
    from hgsearch.events import quiet
    from hgsearch.search.claims import Claim, claim_runs
    from hgsearch.search.context import FamilySearch
    from hgsearch.search.epoch_hook import hook_for, pruner_for
    from hgsearch.search.run import POLL_SECONDS
    from hgsearch.search.trial import run_trials
    from hgsearch.store.storage import make_storage

    cfg = RunConfig(budget=BUDGET, trials=a.trials, epochs=a.epochs, study=study, storage=url,
                    results_dir=a.results_dir, storage_retry_seconds=120)
    storage = make_storage(url, cfg.storage_retry_seconds)  # this worker's own (url is unique per worker)
    data = SimpleNamespace(d_in=D_IN, d_out=D_OUT)
    searches = {f: FamilySearch(optuna.load_study(study_name=f"{study}.{f}", storage=storage), cfg, f, data, quiet)
                for f in FAMILIES}
    executor = StandInExecutor(a.epoch_seconds, tuple(pruner_for(cfg).rungs), lat)
    on_epoch = hook_for(cfg)
    pending = list(FAMILIES)
    while pending:
        all_wait = True
        for fam in list(pending):
            t0 = time.perf_counter()
            got = claim_runs(searches[fam], 1, on_epoch)
            if got is Claim.DONE:
                pending.remove(fam)
                continue
            if got is Claim.WAIT:
                continue
            lat["claim"].append(time.perf_counter() - t0)
            all_wait = False
            run_trials(searches[fam], got, executor)
            lat["tell"].append(time.perf_counter() - lat["executor_end"][-1])
        if pending and all_wait:
            time.sleep(POLL_SECONDS)


def worker_main(a: argparse.Namespace) -> None:
    import logging

    logging.getLogger("optuna").setLevel(logging.ERROR)
    lat: dict[str, list[float]] = {"claim": [], "tell": [], "rung": [], "executor_end": []}
    errors: list[str] = []

    def one(i: int) -> None:
        sep = "&" if "?" in a.url else "?"
        try:
            worker_thread(f"{a.url}{sep}application_name=w{os.getpid()}-{i}", a.study, a, lat)
        except Exception as e:  # reported, and the exactness checks show what it cost
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.threads)]
    for i, t in enumerate(threads):
        time.sleep(random.uniform(0, 0.05) if i else 0)
        t.start()
    for t in threads:
        t.join()
    del lat["executor_end"]
    Path(a.out).write_text(json.dumps({"lat": lat, "errors": errors}))


# ---------------------------------------------------------------- driver side

def pg_bin() -> Path:
    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]


def as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Server:
    """The PostgreSQL server under test: restart it, count its connections, read its CPU from /proc."""

    def __init__(self, pgdata: Path, url: str) -> None:
        import shlex

        self.data, self.url = pgdata, url
        words = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
        self.opts = shlex.join(w for i, w in enumerate(words) if w != "-D" and (i == 0 or words[i - 1] != "-D"))
        self.cpu_before_restarts = 0.0

    def _ctl(self, *args: str) -> None:
        subprocess.run([*as_postgres(), str(pg_bin() / "pg_ctl"), "-D", str(self.data), *args], check=True,
                       capture_output=True, timeout=120)

    def restart(self, down: float) -> None:
        self.cpu_before_restarts += self.cpu() - self.cpu0
        self._ctl("-m", "fast", "-w", "stop")
        time.sleep(down)
        self._ctl("-w", "-t", "60", "-l", str(self.data / "server.log"), "-o", self.opts, "start")
        self.cpu0 = self.cpu()

    def cpu(self) -> float:
        """CPU seconds of the postmaster, its live children, and its children that have exited."""
        tick = os.sysconf("SC_CLK_TCK")
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ppid = int(f[1])
            if int(pid) == master:
                total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
            elif ppid == master:
                total += int(f[11]) + int(f[12])
        return total / tick

    def start_measuring(self) -> None:
        self.cpu_before_restarts, self.cpu0 = 0.0, self.cpu()

    def cpu_used(self) -> float:
        return self.cpu_before_restarts + self.cpu() - self.cpu0

    def connections(self) -> int | None:
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        try:
            out = subprocess.run([*as_postgres(), str(pg_bin() / "psql"), "-h", "127.0.0.1", "-p", port, "-U",
                                  "postgres", "-Atc", "select count(*) from pg_stat_activity where "
                                  "backend_type = 'client backend'"], capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip()) - 1  # not this query's own
        except (ValueError, subprocess.TimeoutExpired):
            return None


def start_pgbouncer(server_url: str, pool_size: int, workdir: Path,
                    query_wait_timeout: int = 120) -> tuple[subprocess.Popen, str]:
    """pgbouncer in transaction pooling mode in front of the server; returns (process, URL through it).

    query_wait_timeout: seconds a client waits for a server connection before pgbouncer drops it
    (pgbouncer's default, 120, unless a test wants a wait to fail fast)."""
    from sqlalchemy.engine import make_url

    u = make_url(server_url)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "users.txt").write_text(f'"{u.username}" "{u.password}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
{u.database} = host={u.host} port={u.port} dbname={u.database}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = plain
auth_file = {workdir}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 5000
query_wait_timeout = {query_wait_timeout}
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
unix_socket_dir =
""")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        for p in workdir.iterdir():
            shutil.chown(p, "postgres")
    proc = subprocess.Popen([*as_postgres(), shutil.which("pgbouncer") or "/usr/sbin/pgbouncer",
                             str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc, u.set(port=port).render_as_string(hide_password=False)


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def check(url: str, study: str, trials: int) -> dict[str, Any]:
    """The exactness checks on the stored study."""
    import optuna

    out: dict[str, Any] = {"exact": True, "notes": []}
    killed_retries: list[int] = []
    dropped = 0
    for fam in FAMILIES:
        ts = optuna.load_study(study_name=f"{study}.{fam}", storage=url).get_trials()
        n = Counter(t.state.name for t in ts)
        finished = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
        configs = [tuple(sorted(t.params.items())) for t in finished]
        ok = len(finished) == trials and n["RUNNING"] == n["WAITING"] == 0 and len(set(configs)) == len(configs)
        out["exact"] &= ok
        out["notes"].append(f"{fam}: {dict(n)}")
        for t in ts:
            reason = t.user_attrs.get("fail_reason", "")
            dropped += "dropped" in reason
            if t.state.name == "FAIL" and t.params and ("is gone" in reason or "no heartbeat" in reason):
                killed_retries.append(sum(t.number in u.user_attrs.get("retry_of", []) for u in ts))
    out["dropped"] = dropped
    out["killed"] = len(killed_retries)
    out["killed_retried_once"] = all(k == 1 for k in killed_retries)
    out["exact"] &= dropped == 0 and out["killed_retried_once"]
    return out


def run_one(a: argparse.Namespace, n: int, url: str, server: Server, label: str) -> dict[str, Any]:
    import optuna

    from hgsearch.store.schema import DIRECTIONS
    from hgsearch.store.storage import make_storage

    study = f"load-{label}-{n}-{uuid.uuid4().hex[:6]}"
    trials = a.trials or n
    for fam in FAMILIES:
        optuna.create_study(study_name=f"{study}.{fam}", storage=make_storage(url), directions=DIRECTIONS)
    procs_n = max(1, min(a.max_procs, n))
    per = [n // procs_n + (i < n % procs_n) for i in range(procs_n)]
    tmp = Path(tempfile.mkdtemp(prefix="hgsearch-load-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HGSEARCH_STORAGE_REACHED": "1"}
    procs = []
    server.start_measuring()
    t0 = time.perf_counter()
    for i, k in enumerate(per):
        cmd = [sys.executable, __file__, "--worker", "--url", url, "--study", study, "--threads", str(k),
               "--trials", str(trials), "--epochs", str(a.epochs), "--epoch-seconds", str(a.epoch_seconds),
               "--results-dir", str(tmp / f"host{i}"), "--out", str(tmp / f"w{i}.json")]
        procs.append(subprocess.Popen(cmd, env=env, stderr=(tmp / f"w{i}.err").open("w")))
    # 10% of the workers killed (whole processes: hosts), at random moments in the run's first part.
    kill_workers, kill_at, killed = math.ceil(a.kill * n) if a.kill else 0, [], set()
    if kill_workers:
        order = random.sample(range(procs_n), procs_n)
        while kill_workers > 0 and order:
            i = order.pop()
            kill_at.append((random.uniform(0.2, 0.6) * a.expect_seconds, i))
            kill_workers -= per[i]
    restart_at = 0.4 * a.expect_seconds if a.restart else None
    peak = 0
    while any(p.poll() is None for i, p in enumerate(procs) if i not in killed):
        now = time.perf_counter() - t0
        for at, i in list(kill_at):
            if now >= at:
                procs[i].send_signal(signal.SIGKILL)
                # Reaped at once, as a host's init or `hgsearch run` would: a zombie keeps its pid, so
                # the dead workers' trials looked alive to the pid check until the 60 s heartbeat
                # grace, and one killed before its first beat was never reaped (the run timed out).
                procs[i].wait()
                killed.add(i)
                kill_at.remove((at, i))
        if restart_at is not None and now >= restart_at:
            restart_at = None
            server.restart(a.down_seconds)
        c = server.connections()
        peak = max(peak, c or 0)
        if now > a.timeout:
            for p in procs:
                p.kill()
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    cpu = server.cpu_used()
    lat: dict[str, list[float]] = {"claim": [], "tell": [], "rung": []}
    errors = []
    for i in range(procs_n):
        f = tmp / f"w{i}.json"
        if i not in killed and f.exists():
            got = json.loads(f.read_text())
            for k in lat:
                lat[k] += got["lat"][k]
            errors += got["errors"]
    res = check(url, study, trials)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"label": label, "n": n, "procs": procs_n, "trials": trials, "wall": wall,
            "rate": 2 * trials / wall, "peak_conn": peak, "db_cpu": cpu, "errors": errors,
            "killed_workers": sum(per[i] for i in killed),
            **{f"{k}_p50": pct(v, 0.5) for k, v in lat.items()}, **{f"{k}_p99": pct(v, 0.99) for k, v in lat.items()},
            **res}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--study", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", help=argparse.SUPPRESS)
    ap.add_argument("--url", default=os.environ.get("HGSEARCH_TEST_POSTGRES"), help="the PostgreSQL server's URL")
    ap.add_argument("--pgdata", default=os.environ.get("PGDATA"), help="its data directory (restart, CPU)")
    ap.add_argument("--workers", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--trials", type=int, default=0, help="finished trials per family (0: one per worker)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--epoch-seconds", type=float, default=1.0)
    ap.add_argument("--max-procs", type=int, default=10, help="processes (hosts) the workers are spread over")
    ap.add_argument("--kill", type=float, default=0.1, help="share of the workers killed with SIGKILL")
    ap.add_argument("--restart", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--down-seconds", type=float, default=2.0)
    ap.add_argument("--expect-seconds", type=float, default=20.0, help="kills and the restart fall in this span")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--pgbouncer", action="store_true", help="also through pgbouncer (transaction pooling)")
    ap.add_argument("--only-pgbouncer", action="store_true", help="skip the direct runs")
    ap.add_argument("--pool-size", type=int, default=20, help="pgbouncer's server connections per database")
    ap.add_argument("--json", help="append each result as a JSON line here")
    return ap.parse_args(argv)


def main() -> None:
    a = parse_args()
    if a.worker:
        return worker_main(a)
    server = Server(Path(a.pgdata), a.url)
    modes = [] if a.only_pgbouncer else [("direct", a.url, None)]
    bouncer = None
    if a.pgbouncer or a.only_pgbouncer:
        bouncer, via = start_pgbouncer(a.url, a.pool_size, Path(tempfile.mkdtemp(prefix="hgsearch-pgb-")))
        modes.append(("pgbouncer", via, bouncer))
    print("path       N  procs  trials  wall s  trials/s  claim p50/p99 s  tell p50/p99 s  rung p50/p99 s  "
          "peak conn  db CPU s  killed  exact  dropped", flush=True)
    try:
        for label, url, _ in modes:
            for n in a.workers:
                r = run_one(a, n, url, server, label)
                print(f"{label:9} {n:3}  {r['procs']:5}  {r['trials']:6}  {r['wall']:6.1f}  {r['rate']:8.2f}  "
                      f"{r['claim_p50']:.3f}/{r['claim_p99']:.3f}      {r['tell_p50']:.3f}/{r['tell_p99']:.3f}     "
                      f"{r['rung_p50']:.3f}/{r['rung_p99']:.3f}     {r['peak_conn']:9}  {r['db_cpu']:8.1f}  "
                      f"{r['killed_workers']:6}  {'yes' if r['exact'] else 'NO':5}  {r['dropped']}", flush=True)
                print(f"    {'; '.join(r['notes'])}; killed trials {r['killed']}, each retried once: "
                      f"{r['killed_retried_once']}" + (f"; worker errors: {Counter(r['errors'])}" if r['errors']
                                                       else ""), flush=True)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    finally:
        if bouncer is not None:
            bouncer.terminate()


if __name__ == "__main__":
    main()
