"""`run --workers N`: device/thread plans, N real processes on one SQLite study, and Ctrl-C stopping them all."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hgsearch.search.workers import plan_workers, visible_gpus
from tests.conftest import assert_exactly, hgsearch, popen, states, wait_for


def test_gpus_round_robin_and_cpu_threads_shared():
    plans = plan_workers(3, ["0", "1"], cores=16)
    assert [p.env for p in plans] == [{"CUDA_VISIBLE_DEVICES": d} for d in ("0", "1", "0")]
    assert [p.threads for p in plans] == [5, 5, 5]
    cpu = plan_workers(4, [], cores=2)
    assert [p.env for p in cpu] == [{}] * 4 and [p.threads for p in cpu] == [1] * 4
    assert "GPU 1, 5 threads" in plans[1].label and "CPU, 1 thread" in cpu[0].label


def test_cuda_visible_devices_is_honoured():
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus("cuda", {"CUDA_VISIBLE_DEVICES": "GPU-8c1a"}) == ["GPU-8c1a"]
    assert visible_gpus("auto", {"CUDA_VISIBLE_DEVICES": ""}) == []  # "" hides every GPU
    assert visible_gpus("cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == []


def run_args(data: Path, trials: int, epochs: int) -> list[str]:
    return ["run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(data), "--trials", str(trials),
            "--epochs", str(epochs), "--study", "w", "--workers", "2"]


@pytest.mark.slow
def test_two_workers_reach_exactly_n_without_lock_errors(tiny_idx, tmp_path):
    res = hgsearch(*run_args(tiny_idx, 4, 2), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 workers" in res.stdout and "worker 1: CPU" in res.stdout
    assert "locked" not in res.stdout + res.stderr
    url = f"sqlite:///{tmp_path / 'results' / 'w' / 'study.db'}"
    trials = states(url, "w")
    assert_exactly(trials, 4)
    for ts in trials.values():  # the only failures allowed are lost claim races, never errors
        assert all("surplus" in t.user_attrs.get("fail_reason", "") for t in ts if t.state.name == "FAIL")


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_then_the_same_command_finishes(tiny_idx, tmp_path):
    args = run_args(tiny_idx, 3, 3)
    err = tmp_path / "stderr.txt"
    # Each worker process pauses once mid-epoch (search's test hook): both then hold a RUNNING trial.
    p = popen(args, tmp_path, err, HGSEARCH_TEST_PAUSE_AT="epoch")
    wait_for(lambda: err.read_text().count("HGSEARCH_PAUSED epoch") == 2 or p.poll() is not None, 180,
             "both workers to be mid-trial")
    assert p.poll() is None, err.read_text()
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    stopped_in = time.monotonic() - t0
    text = err.read_text()
    assert p.returncode == 130, text
    assert stopped_in < 30, f"took {stopped_in:.0f} s to stop"
    assert text.count("Resume with") == 1, text  # one resume line, from the parent only
    assert "stopping every worker" in out
    url = f"sqlite:///{tmp_path / 'results' / 'w' / 'study.db'}"
    trials = [t for ts in states(url, "w").values() for t in ts]
    assert not [t for t in trials if t.state.name == "RUNNING"]  # both cut-off trials were closed
    assert sum(t.state.name == "WAITING" for t in trials) == 2  # ... and queued to continue
    assert sum("interrupted by SIGINT" in t.user_attrs.get("fail_reason", "") for t in trials) == 2

    again = hgsearch(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    final = states(url, "w")
    assert_exactly(final, 3)
    retried = [t for ts in final.values() for t in ts if t.state.name == "COMPLETE" and t.user_attrs.get("retry_of")]
    assert len(retried) == 2


@pytest.mark.slow
def test_a_crashing_worker_is_one_line_naming_its_traceback_file(tiny_idx, tmp_path):
    # The test hook makes worker 0 raise a RuntimeError, as a bug in the search would.
    res = hgsearch(*run_args(tiny_idx, 1, 1), cwd=tmp_path, env={"HGSEARCH_TEST_CRASH_WORKER": "0"})
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: worker 0 crashed: RuntimeError: crash requested by the test hook")
    logs = list((tmp_path / "results" / "w" / "logs").glob("worker-0-crash-*.log"))
    assert len(logs) == 1 and str(logs[0].relative_to(tmp_path)) in lines[0]
    text = logs[0].read_text()
    assert text.startswith("Traceback (most recent call last):") and "RuntimeError: crash requested" in text


EXIT_UNDER_A_STOP = """
import multiprocessing as mp, os, signal, time
from hgsearch.config import RunConfig
from hgsearch.search import workers
if __name__ == "__main__":
    os.environ[workers.CRASH_ENV] = "0"
    events = mp.get_context("spawn").Queue()
    workers._worker_main(RunConfig(budget=100_000), workers.WorkerPlan(0, {}, 1), events)
    os.kill(os.getpid(), signal.SIGINT)  # the parent's stop, sent while this worker is on its way out
    time.sleep(0.5)
    index, kind, _ = events.get(timeout=30)
    print("ended:", index, kind)
"""


def test_a_stop_that_reaches_a_worker_on_its_way_out_is_no_traceback(tmp_path):
    """When one worker reports an error the parent SIGINTs the others; one that had just reported its own
    error and was exiting (multiprocessing flushing its queue) printed a KeyboardInterrupt traceback on
    CI, under the one-line error (test_faults' outage test). After the worker's body a stop is only noted."""
    script = tmp_path / "exit_under_a_stop.py"
    script.write_text(EXIT_UNDER_A_STOP)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout.strip() == "ended: 0 crash", res.stdout
