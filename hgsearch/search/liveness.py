"""Whether a RUNNING trial's worker is alive: worker identity (host, boot, pid, start) and heartbeats."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import optuna

from hgsearch.store.storage import HEARTBEAT_INTERVAL


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a live pid from a reused one); None when
    it is gone or a zombie (exited, only waiting for its parent to collect it: its trials are as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def worker_gone(worker: Any) -> bool:
    """True when the worker ran on this machine and its process no longer exists (no need to wait)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False  # another machine: only its heartbeat can tell
    if worker.get("boot") != _boot_id():
        return True  # this machine rebooted since
    if worker.get("pid") == os.getpid():
        return False
    if worker.get("start") is None or not Path("/proc").is_dir():
        try:
            os.kill(int(worker["pid"]), 0)
            return False
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError):
            return False
    return _proc_start(int(worker["pid"])) != worker["start"]


def who(worker: Any) -> str:
    return f"{worker.get('host')}:{worker.get('pid')}" if isinstance(worker, dict) else "(unknown)"


class Heartbeat:
    """Records a trial's heartbeat every HEARTBEAT_INTERVAL s from a daemon thread.

    We use ask/tell, not study.optimize (which runs Optuna's own heartbeat thread), because the run
    loop must count and claim a trial before asking (no overshoot with many workers), queue a
    cut-off trial for retry with its checkpoint, and stop between steps on a signal. Unlike Optuna's
    thread, this one is a daemon (a hung storage cannot keep a stopping process alive) and survives
    transient storage errors (a missed beat is retried next interval).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stopped.wait(HEARTBEAT_INTERVAL):
                return

    def start(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)  # the first beat before any work
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
