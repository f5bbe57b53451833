"""Test hooks of the search: pause a run at a named point of a trial so a test can kill it there."""

from __future__ import annotations

import os
import time

from hgsearch.stop import stop_requested

PAUSE_ENV = "HGSEARCH_TEST_PAUSE_AT"


_trials_started = [0]  # trials this process has started, so a test can pause in the k-th one


def trial_begins() -> None:
    """A trial this process runs begins (TrialRun.begin): count it, for pause_at's <point>:<k>, and pause at
    "claimed" (no configuration stored yet)."""
    _trials_started[0] += 1
    pause_at("claimed")


def pause_at(point: str) -> None:
    """With HGSEARCH_TEST_PAUSE_AT=<point>[:<k>], print a marker and wait there, in the k-th trial this
    process runs (default 1), so a test can kill the process at a known place. Points: claimed (no
    configuration stored yet), epoch (mid-epoch, a checkpoint on disk), decided (an epoch's on_epoch
    decision taken, its checkpoint not written), eval (training done, evaluation next), complete (told
    COMPLETE, checkpoint not yet removed). Returns on a stop."""
    want = os.environ.get(PAUSE_ENV)
    if not want or want.partition(":")[0] != point or int(want.partition(":")[2] or 1) != _trials_started[0]:
        return
    os.environ.pop(PAUSE_ENV)  # once per process
    os.write(2, f"HGSEARCH_PAUSED {point}\n".encode())
    while not stop_requested():
        time.sleep(0.05)
