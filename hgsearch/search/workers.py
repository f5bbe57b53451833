"""Worker processes on this machine for one study: a device or CPU-thread share each, one event stream, one stop."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hgsearch.config import RunConfig
from hgsearch.errors import HgsearchError, UsageError
from hgsearch.events import Done, Event, Note, Progress, Reporter, Start, from_worker
from hgsearch.stop import request_stop
from hgsearch.store import quiet_optuna_rdb_logger
from hgsearch.text import first_line

STOP_GRACE_S = 60.0  # after Ctrl-C, how long workers get to close their trials before they are killed
PROGRESS_EVERY_S = 0.5  # progress events are per step; the parent's display needs a few per second at most
# Test hook: HGSEARCH_TEST_CRASH_WORKER=<index> makes that worker raise a RuntimeError (a stand-in for a bug)
# right after it starts, so a test can check what a crash looks like to the user.
CRASH_ENV = "HGSEARCH_TEST_CRASH_WORKER"


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process gets: environment overrides (CUDA_VISIBLE_DEVICES) and its CPU threads."""

    index: int
    env: dict[str, str]
    threads: int

    @property
    def label(self) -> str:
        gpu = self.env.get("CUDA_VISIBLE_DEVICES")
        where = f"GPU {gpu}" if gpu is not None else "CPU"
        return f"worker {self.index}: {where}, {self.threads} thread" + ("s" if self.threads > 1 else "")


def visible_gpus(device: str, environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids the workers may use: CUDA_VISIBLE_DEVICES when set, else every device PyTorch counts."""
    environ = os.environ if environ is None else environ
    if device == "cpu":
        return []
    if "CUDA_VISIBLE_DEVICES" in environ:  # honoured as given, ids or UUIDs; "" means no GPU at all
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_workers(n: int, gpus: list[str], cores: int) -> list[WorkerPlan]:
    """GPUs round-robin (one CUDA_VISIBLE_DEVICES entry per worker); the CPU cores split evenly."""
    threads = max(1, cores // n)
    return [WorkerPlan(i, {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}, threads) for i in range(n)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _QueueReporter:
    """A worker's reporter: every event goes to the parent, which tags it with the worker's index.

    Messages are (index, kind, pickled payload): kind "event" carries a reporter event; "exit",
    "error" and "crash" carry a dict saying how the worker ended.
    """

    def __init__(self, events: Any, index: int) -> None:
        self.events = events
        self.index = index
        self.last_progress = 0.0

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, Progress):
            now = time.monotonic()
            if now - self.last_progress < PROGRESS_EVERY_S and ev.step != ev.steps:
                return
            self.last_progress = now
        self.put("event", ev)

    def put(self, kind: str, payload: Any) -> None:
        # Pickled here rather than in the queue's feeder thread, where a failure would only print.
        self.events.put((self.index, kind, pickle.dumps(payload)))


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, so a killed `run` leaves no orphan workers."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(cfg: RunConfig, plan: WorkerPlan, events: Any) -> None:
    """Body of one worker process: set its device and threads, run the shared search, report how it ended."""
    # CUDA reads CUDA_VISIBLE_DEVICES only when it is first initialised, which comes later (torch
    # itself may already be imported), so setting it here still picks this worker's GPU.
    os.environ.update(plan.env)
    # Outside the search (its imports before, its exit after) a stop from the parent is only noted, never
    # an exception: the parent stops the others when one worker reports an error, and a SIGINT landing in
    # this process's exit, while multiprocessing flushes its last message, printed a traceback and lost
    # the message. One noted before the search starts stops it at its first check (stop.request_stop).
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, _frame: request_stop(signal.Signals(signum).name))
    logging.disable(logging.INFO)  # as cli.main does for the parent: no Optuna INFO lines under the display
    quiet_optuna_rdb_logger()  # as cli.main does: a spawned worker does not pass through it
    # Its own process group: a Ctrl-C at the terminal reaches the parent only, which forwards it once,
    # so a worker never sees two interrupts for one key press.
    os.setpgrp()
    _die_with_parent()
    reporter = _QueueReporter(events, plan.index)
    try:
        import torch

        torch.set_num_threads(plan.threads)
        from hgsearch.search.run import run_search
        from hgsearch.stop import stop_on_signals

        if os.environ.get(CRASH_ENV) == str(plan.index):
            raise RuntimeError(f"crash requested by the test hook {CRASH_ENV}")
        # The same stop as a single `run`: the first signal stops after the current step (the trial is
        # queued to continue from its checkpoint), a second one at once.
        with stop_on_signals():
            run_search(cfg, reporter=reporter)
    except KeyboardInterrupt:
        reporter.put("exit", {"code": 130})
    except HgsearchError as e:
        reporter.put("error", {"message": str(e), "exit_code": e.exit_code})
    except BaseException as e:  # a bug: the parent reports it in one line, the traceback goes with it
        reporter.put("crash", {"message": f"{type(e).__name__}: {first_line(e)}",
                               "traceback": traceback.format_exc()})
    else:
        reporter.put("exit", {"code": 0})


class _Stop:
    """Parent-side signal state: the first SIGINT/SIGTERM asks workers to stop, the next ones insist."""

    def __init__(self) -> None:
        self.count = 0
        self.signum = signal.SIGINT
        self.since = 0.0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signum = signal.Signals(signum)
        self.since = self.since or time.monotonic()


def run_parallel(cfg: RunConfig, n: int, reporter: Reporter) -> None:
    """Run `n` worker processes on cfg's study until it is complete; one event stream into `reporter`.

    Worker 0 starts first and opens (or creates) the studies, so that settings checks, data errors and
    table creation happen once; the others join when it reports "start". Ctrl-C or SIGTERM is
    forwarded once to every worker (a second one is forwarded again, which the search treats as "now");
    the parent returns when all workers have ended and raises stop.Stopped if it was stopped.
    """
    if n < 1:
        raise UsageError(f"--workers must be at least 1, got {n}")
    plans = plan_workers(n, visible_gpus(cfg.device), _cores())
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and any CUDA state
    events = ctx.Queue()
    procs: dict[int, Any] = {}
    ended: dict[int, tuple[str, dict[str, Any]]] = {}
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    forwarded = 0
    started = False
    notes: set[str] = set()
    t0 = time.perf_counter()

    def start(plan: WorkerPlan) -> None:
        p = ctx.Process(target=_worker_main, args=(cfg, plan, events), name=f"hgsearch-worker-{plan.index}")
        p.start()
        procs[plan.index] = p

    def signal_all(signum: int) -> None:
        for i, p in procs.items():
            if i not in ended and p.is_alive():
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    try:
        start(plans[0])
        while len(ended) < len(procs):
            if stop.count > forwarded:
                if not forwarded:
                    reporter(Note(f"{stop.signum.name}: stopping every worker after its current "
                                  "step; press Ctrl-C again to stop them at once"))
                forwarded = stop.count
                signal_all(stop.signum)
            if stop.since and time.monotonic() - stop.since > STOP_GRACE_S:
                signal_all(signal.SIGKILL)  # their trials are left to the heartbeat check, like a kill -9
            try:
                index, kind, blob = events.get(timeout=0.2)
            except queue.Empty:
                _note_dead(procs, ended, events, reporter)
                continue
            payload = pickle.loads(blob)
            if kind in ("exit", "error", "crash"):
                ended[index] = (kind, payload)
                if kind != "exit" and not stop.since:
                    # One worker's error stops the rest (they would hit it too), as a Ctrl-C would.
                    stop.since = time.monotonic()
                    signal_all(signal.SIGINT)
                continue
            if isinstance(payload, Start):
                if started:
                    continue  # the display shows the study once
                started = True
                reporter(replace(payload, workers=n))
                reporter(Note("; ".join(p.label for p in plans)))
                if not stop.since:
                    for plan in plans[1:]:  # the storage was reached: they wait out an outage as they open it
                        start(replace(plan, env={**plan.env, "HGSEARCH_STORAGE_REACHED": "1"}))  # resilient.REACHED_ENV
                continue
            if isinstance(payload, Note):
                if payload.message in notes:
                    continue
                notes.add(payload.message)
            if isinstance(payload, Done):
                continue  # one Done for all workers, below
            reporter(from_worker(payload, index))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if any(p.is_alive() for p in procs.values()):  # the parent itself failed: stop them as a Ctrl-C would
            signal_all(signal.SIGINT)
        deadline = time.monotonic() + 10
        for p in procs.values():
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()  # what it was running is retried, as after kill -9
                p.join()
        events.close()
    _outcome(ended, stop, reporter, time.perf_counter() - t0, cfg.study_dir / "logs")


def _note_dead(procs: dict[int, Any], ended: dict[int, tuple[str, dict[str, Any]]], events: Any,
          reporter: Reporter) -> None:
    """Workers that died without a word (kill -9, out of memory): note it; the others carry on."""
    for i, p in procs.items():
        if i in ended or p.is_alive() or p.exitcode is None:
            continue
        try:
            # Its last messages may still be in the pipe; they are handled before judging it dead.
            time.sleep(0.1)
            if not events.empty():
                return
        except OSError:
            pass
        how = f"signal {signal.Signals(-p.exitcode).name}" if p.exitcode < 0 else f"exit code {p.exitcode}"
        ended[i] = ("died", {"message": f"worker {i} died ({how})"})
        reporter(Note(f"worker {i} died ({how}); the other workers retry the trial it was running"))


def _crash_log(log_dir: Path, index: int, text: str) -> Path:
    """Keep a crashed worker's traceback in a file (the study's logs/, else the temp dir); return its path."""
    name = f"worker-{index}-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    raise HgsearchError(f"a worker crashed and its traceback could not be written to {log_dir} or "
                        f"{tempfile.gettempdir()}: free some space and run again to see it")


def _outcome(ended: dict[int, tuple[str, dict[str, Any]]], stop: _Stop, reporter: Reporter, seconds: float,
             log_dir: Path) -> None:
    """Turn the workers' endings into the parent's: an error, an interrupt, or done."""
    for kind, info in ended.values():
        if kind == "error":
            err = HgsearchError(info["message"])
            err.exit_code = info["exit_code"]  # usage errors stay exit code 2
            raise err
    for index, (kind, info) in ended.items():
        if kind == "crash":
            log = _crash_log(log_dir, index, info["traceback"])
            raise HgsearchError(f"worker {index} crashed: {info['message']}; the full traceback is in {log} "
                                "(please report it with that file)")
    if stop.count:
        from hgsearch.stop import Stopped

        raise Stopped(stop.signum.name)
    if not any(kind == "exit" and info["code"] == 0 for kind, info in ended.values()):
        raise HgsearchError("every worker died before the study was complete: run the same command again to "
                            "finish it (trials they left running are retried)")
    reporter(Done(seconds))
