"""Shared fixtures and helpers: small but real datasets (IDX files on disk, in-memory Dataset objects),
the CLI run in a subprocess or in-process, and the multi-process helpers. Test modules share code
only through this file, never by importing another test module."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hgsearch.data import Dataset, ImageSet

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


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
    from hgsearch.cli import main

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


def assert_exactly(trials: dict[str, list], n: int) -> None:
    """n COMPLETE per family, nothing left RUNNING or WAITING, no configuration completed twice."""
    for fam, ts in trials.items():
        count = Counter(t.state.name for t in ts)
        assert count["COMPLETE"] == n, (fam, count)
        assert count["RUNNING"] == count["WAITING"] == 0, (fam, count)
        done = [tuple(sorted(t.params.items())) for t in ts if t.state.name == "COMPLETE"]
        assert len(set(done)) == len(done), f"{fam}: a configuration completed twice"

