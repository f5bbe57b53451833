"""Stopping a search cleanly: SIGINT/SIGTERM (or request_stop) -> Stopped at the next safe point.

A stop closes the claimed trial the same way a dead worker's trial is closed (failed with its
reason, queued again, continuing from its checkpoint): see search.trial.TrialRun.requeue.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


class Stopped(KeyboardInterrupt):
    """Raised at the next safe point after SIGINT/SIGTERM (or at once on the second signal)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


_stop: list[str] = []  # the first stop signal's name, once one arrived


def request_stop(signame: str = "SIGINT") -> None:
    """Ask run_search to stop at its next safe point (between steps, epochs or trials)."""
    if not _stop:
        _stop.append(signame)


def stop_requested() -> bool:
    return bool(_stop)


def check_stop() -> None:
    if _stop:
        raise Stopped(_stop[0])


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[str], None] | None = None) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the current step, close the trial (queued for retry), stop.

    A second one raises Stopped at once, wherever the main thread is; the storage stays consistent
    (database transactions are atomic) and anything left RUNNING is retried by the next run, exactly
    as after kill -9. Main thread only (Python's signal rule).
    """

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _stop:
            raise Stopped(name)
        request_stop(name)
        if on_first is not None:
            on_first(name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop.clear()
