"""Shared fixtures: small but real IDX datasets written to disk in the official format."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
