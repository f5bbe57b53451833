"""Shared fixtures and helpers: small but real datasets (IDX files on disk, in-memory Dataset objects),
the CLI run in a subprocess or in-process, and the multi-process helpers. Test modules share code
only through this file, never by importing another test module."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import selectors
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import optuna
import pytest

from hgsearch.data.registry import Dataset, ImageSet
from hgsearch.search import testhooks

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py imported as the module bench_<name>, registered first (dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000 0x08 ndim, big-endian dims, payload)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


def smooth_images(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n blurry blob images (learnable structure, unlike white noise) and labels 0..9."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    labels = rng.integers(0, 10, n)
    cx, cy = (labels % 5 + 0.5) / 5, (labels // 5 + 0.5) / 2 + rng.normal(0, 0.05, n)
    img = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / 0.02)
    img = img + rng.uniform(0, 0.2, (n, side, side))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), labels.astype(np.uint8)


def dataset(n_train: int = 120, n_test: int = 30, side: int = 28, channels: int = 1) -> Dataset:
    """An in-memory Dataset of smooth images (no files), for tests of tasks and training."""
    imgs, labels = smooth_images(n_train + n_test, side, 0)
    # Colour channels differ (the image, its mirror, its negative), so a channel mix-up shows.
    imgs = np.stack([imgs, imgs[:, :, ::-1], 255 - imgs][:channels], axis=1)
    labels = labels.astype(np.int64)
    return Dataset("synthetic", ImageSet(imgs[:n_train], labels[:n_train]),
                   ImageSet(imgs[n_train:], labels[n_train:]), "0" * 64, "memory")


def make_idx_dataset(root: Path, n_train: int = 600, n_test: int = 200, side: int = 12) -> Path:
    """A tiny dataset in the four standard IDX files, as `--dataset idx --data-dir` expects."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = smooth_images(n, side, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("tinyidx"))


def hgsearch(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
             ) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "hgsearch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Iterator[Callable[..., tuple]]:
    """cli("run", "--budget", "5X", cwd=path) -> (exit code, stdout, stderr): the console script's entry
    point in this process (a subprocess per call would re-import torch each time)."""
    from hgsearch.cli.commands import main

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["hgsearch", *args])
        monkeypatch.setenv("COLUMNS", "200")
        with pytest.raises(SystemExit) as e:
            main()
        got = capsys.readouterr()
        return e.value.code, got.out, got.err

    disabled = logging.root.manager.disable
    yield run
    logging.disable(disabled)  # main() quiets logging for its whole process; here that is pytest's


# Multi-process helpers (test_workers, test_postgres): several `hgsearch run` processes on one study.
FAMILIES = ("hourglass", "conventional")


def popen(args: list[str], cwd: Path, stderr: Path, **env: str) -> subprocess.Popen:
    """`hgsearch <args>` started in the background, stderr to a file the test can poll."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
    return subprocess.Popen([sys.executable, "-m", "hgsearch", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def states(url: str, study: str) -> dict[str, list]:
    """Every trial of each family's study, as Optuna stores it."""
    import optuna

    return {f: optuna.load_study(study_name=f"{study}.{f}", storage=url).get_trials() for f in FAMILIES}


def assert_exactly(trials: dict[str, list], n: int, final: tuple[str, ...] = ("COMPLETE",)) -> None:
    """n trials in the `final` states per family (COMPLETE; with pruning also PRUNED), nothing left
    RUNNING or WAITING, no configuration finished twice."""
    for fam, ts in trials.items():
        count = Counter(t.state.name for t in ts)
        assert sum(count[s] for s in final) == n, (fam, count)
        assert count["RUNNING"] == count["WAITING"] == 0, (fam, count)
        done = [tuple(sorted(t.params.items())) for t in ts if t.state.name in final]
        assert len(set(done)) == len(done), f"{fam}: a configuration finished twice"


# Real `hgsearch run` subprocesses on a tiny dataset, killed and resumed (test_resilience, test_pack_executor).
RUN_ARGS = ("--budget", "100K", "--dataset", "idx", "--epochs", "2")
RUN_STUDY = "superres-idx-100K"
# One thread per process: these runs share 2 busy cores, where spinning OpenMP threads cost seconds.
RUN_ENV = {"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def start_run(cwd: Path, data: Path, *extra: str, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, **RUN_ENV}
    env.pop(testhooks.PAUSE_ENV, None)
    if pause:
        env[testhooks.PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-m", "hgsearch", "run", *RUN_ARGS, "--data-dir", str(data), *extra],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_marker(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    """Read the process's stderr until a line contains marker; return what was read."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stderr.readline()
            seen += line
            if marker in line:
                return seen
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError(f"no {marker!r} from hgsearch (rc {proc.poll()}): {seen}")


def finish_run(cwd: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != testhooks.PAUSE_ENV}
    res = subprocess.run([sys.executable, "-m", "hgsearch", "run", *RUN_ARGS, "--data-dir", str(data), *extra],
                         cwd=cwd, env={**env, **RUN_ENV}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def run_trials(cwd: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    url = f"sqlite:///{cwd / 'results' / RUN_STUDY / 'study.db'}"
    names = optuna.get_all_study_names(storage=url)
    return {n.rsplit(".", 1)[1]: optuna.load_study(study_name=n, storage=url).get_trials() for n in names}


def state_counts(trials: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def run_checkpoints(cwd: Path) -> list[str]:
    d = cwd / "results" / RUN_STUDY / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# A real PostgreSQL server (test_postgres, test_faults): .ci/postgres.sh starts one and prints its URL.
PG_ENV = "HGSEARCH_TEST_POSTGRES"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("HGSEARCH_CI") == "1":
            pytest.fail(f"{PG_ENV} is not set, but this is CI (HGSEARCH_CI=1): .ci/run must start PostgreSQL")
        pytest.skip(f"no PostgreSQL: set {PG_ENV} to run these tests (.ci/postgres.sh starts one)")
    import sqlalchemy

    from hgsearch.store.storage import safe_url

    try:
        with sqlalchemy.create_engine(url).connect() as con:
            con.execute(sqlalchemy.text("select 1"))
    except Exception as e:  # asked for and not there: always a failure, in CI or not
        pytest.fail(f"PostgreSQL at {safe_url(url)} is unreachable: {str(e).splitlines()[0]}")
    return url


@pytest.fixture
def study(postgres_url):
    name = f"pg-{uuid.uuid4().hex[:10]}"
    yield name
    for fam in FAMILIES:  # leave the shared database as it was
        try:
            optuna.delete_study(study_name=f"{name}.{fam}", storage=postgres_url)
        except KeyError:
            pass
