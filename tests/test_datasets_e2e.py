"""Datasets end to end through the real CLI: Fashion-MNIST, generated ImageNet-32 npz files, --download."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FASHION_DIR, hgsearch, smooth_images

needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason="Debian package dataset-fashion-mnist not installed")


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No user data root or mirror, and a private cache, so only what a test names is found."""
    return {"HGSEARCH_DATA_DIR": "", "HGSEARCH_MIRROR": "", "XDG_CACHE_HOME": str(tmp_path / "cache")}


def write_imagenet32(directory: Path, per_batch: int = 12, n_val: int = 30) -> Path:
    """ImageNet-32 in its official npz layout: ten train batches and val_data, 'data' rows channel-major."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"train_data_batch_{k}.npz" for k in range(1, 11)] + ["val_data.npz"]
    for i, name in enumerate(names):
        n = n_val if name == "val_data.npz" else per_batch
        gray, labels = smooth_images(n, 32, seed=i)
        rgb = np.stack([gray, gray[:, :, ::-1], 255 - gray], axis=1)  # three different planes
        np.savez(directory / name, data=rgb.reshape(n, 3072), labels=(labels.astype(np.int64) * 97 % 1000) + 1)
    return directory


def _table(cwd: Path, study: str, name: str) -> pd.DataFrame:
    return pd.read_csv(cwd / "results" / study / name)


@pytest.mark.slow
@needs_fashion
def test_fashion_mnist_run_and_frontier(tmp_path: Path) -> None:
    """The default dataset, read offline from Debian's package, with the validation and test sets whole.

    --train-size keeps it quick: a full epoch over 50k images took 120 CPU-seconds per trial here.
    """
    env = _clean_env(tmp_path)
    args = ("--budget", "800K", "--family", "hourglass", "--trials", "1", "--epochs", "1", "--device", "cpu")
    run = hgsearch("run", *args, "--train-size", "5000", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "1 epoch of 40 steps" in run.stdout  # ceil(5000 / 128) steps: the subset is what trains
    front = hgsearch("frontier", "--plot", cwd=tmp_path, env=env)
    assert front.returncode == 0, front.stderr
    rows = _table(tmp_path, "superres-fashion-mnist-800K", "frontier.csv")
    assert rows[["d_in", "d_out"]].values.tolist() == [[196, 784]]
    assert rows["params"].iloc[0] <= 800_000 and rows["width"].iloc[0] > 784
    assert rows["psnr_val"].iloc[0] > 12  # a learned model, not the 0.5 output of an untrained sigmoid
    assert (tmp_path / "results/superres-fashion-mnist-800K/frontier.png").stat().st_size > 0
    # The training subset defines the study: the full set cannot resume it.
    full = hgsearch("run", *args, cwd=tmp_path, env=env)
    assert full.returncode != 0 and "train_size" in full.stderr and "5000" in full.stderr, full.stderr


@pytest.mark.slow
def test_imagenet32_run_with_flips_and_frontier(tmp_path: Path) -> None:
    """Generated files in the official npz format, colour super-resolution 768 -> 3072, flips x4."""
    data_dir = write_imagenet32(tmp_path / "imagenet32")
    env = _clean_env(tmp_path)
    args = ("--budget", "12M", "--dataset", "imagenet32", "--data-dir", str(data_dir), "--family", "hourglass",
            "--trials", "1", "--epochs", "1", "--device", "cpu", "--augment", "flips")
    run = hgsearch("run", *args, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    front = hgsearch("frontier", cwd=tmp_path, env=env)
    assert front.returncode == 0, front.stderr
    rows = _table(tmp_path, "superres-imagenet32-12M", "frontier.csv")
    assert rows[["d_in", "d_out"]].values.tolist() == [[768, 3072]]  # 3 channels, each downsampled x2
    assert rows["width"].iloc[0] > 3072 and rows["params"].iloc[0] <= 12_000_000  # stream wider than the image
    # 120 training images, 20 carved out for validation, each seen in four flips: ceil(400 / 128) steps.
    assert "1 epoch of 4 steps" in run.stdout
    # The augmentation defines the study: resuming without it is refused, naming the setting.
    plain = hgsearch("run", *args[:-2], cwd=tmp_path, env=env)
    assert plain.returncode != 0 and "augment" in plain.stderr and "'flips'" in plain.stderr, plain.stderr


@pytest.mark.slow
def test_download_offline_is_one_line_naming_files_and_directory(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        env = {**_clean_env(tmp_path), "HGSEARCH_MIRROR": f"http://127.0.0.1:{sock.getsockname()[1]}"}
        res = hgsearch("run", "--budget", "1M", "--dataset", "mnist", "--download", cwd=tmp_path, env=env)
    assert res.returncode == 1 and res.stdout.count("\n") <= 1
    (line,) = res.stderr.strip().splitlines()
    cache = tmp_path / "cache" / "hgsearch" / "mnist"
    assert line.startswith("error: mnist: download failed (could not download")
    assert "refused" in line and line.endswith(f"put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                                               f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
                                               f"(gzip or raw) in {cache}")
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written left behind
    offline = hgsearch("train", "--family", "conventional", "--depth", "1", "--bottleneck", "800", "--lr", "1e-3",
                       "--dataset", "mnist", cwd=tmp_path, env=_clean_env(tmp_path))
    assert offline.returncode == 1 and "rerun with --download" in offline.stderr
