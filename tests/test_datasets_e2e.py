"""Datasets end to end through the real CLI: Fashion-MNIST, generated ImageNet-32 npz files, --download, and
your own images: a generated 32x32 RGB image folder and an .npz of 64x64 grey images."""

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


def write_rgb_folder(root: Path, n_train: int = 48, n_test: int = 16, side: int = 32) -> Path:
    """A generated image folder as users keep one: DIR/train/<class>/*.png and DIR/test/<class>/*.png, RGB."""
    from PIL import Image

    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        gray, labels = smooth_images(n, side, seed)
        for i in range(n):
            rgb = np.stack([gray[i], gray[i, :, ::-1], 255 - gray[i]], axis=-1)
            d = root / split / f"class{labels[i] % 3}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(d / f"{i:04d}.png")
    return root


@pytest.mark.slow
def test_image_folder_32x32_rgb_classify_run_frontier_report(tmp_path: Path) -> None:
    """Colour classification on a folder of PNGs: labels from the class folders, 3072 -> 3072."""
    data_dir = write_rgb_folder(tmp_path / "pets")
    env = _clean_env(tmp_path)
    args = ("--budget", "20M", "--dataset", "folder", "--data-dir", str(data_dir), "--task", "classify",
            "--trials", "2", "--epochs", "1", "--device", "cpu")
    run = hgsearch("run", *args, cwd=tmp_path, env=env)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    # The conventional stream is the image size (3072): its smallest model does not fit, and run says so.
    assert "conventional cannot fit 20,000,000 parameters (its smallest model has 37,754,880)" in run.stdout
    study = "classify-folder-20M"
    front = hgsearch("frontier", "--plot", "--data-dir", str(data_dir), cwd=tmp_path, env=env)
    assert front.returncode == 0, front.stderr
    rows = _table(tmp_path, study, "frontier.csv")
    assert set(map(tuple, rows[["d_in", "d_out"]].values.tolist())) == {(3072, 3072)}
    assert (rows["params"] <= 20_000_000).all() and (rows["width"] > 3072).all()
    assert (tmp_path / "results" / study / "frontier.png").stat().st_size > 0
    rep = hgsearch("report", "--data-dir", str(data_dir), cwd=tmp_path, env=env)
    assert rep.returncode == 0, rep.stderr
    page = (tmp_path / "results" / study / "report.html").read_text()
    assert page.count("<img") >= 3 and "no baseline" not in page
    # Decoded once: the cache holds the folder as uint8, and a changed image is refused on resume.
    assert len(list((tmp_path / "cache" / "hgsearch" / "folder").glob("*.npz"))) == 1
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(next((data_dir / "test").rglob("*.png")))
    again = hgsearch("run", *args, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "dataset_checksum" in again.stderr, again.stderr


@pytest.mark.slow
def test_npz_64x64_grey_superres_run_frontier_report(tmp_path: Path) -> None:
    """Grey 64x64 floats in [0, 1] from an .npz, no labels: super-resolution 1024 -> 4096."""
    x_train = smooth_images(60, 64, 0)[0] / 255.0
    x_test = smooth_images(12, 64, 1)[0] / 255.0
    data = tmp_path / "scans.npz"
    np.savez(data, x_train=x_train.astype(np.float32), x_test=x_test.astype(np.float32))
    env = _clean_env(tmp_path)
    args = ("--budget", "25M", "--dataset", "npz", "--data-dir", str(data), "--trials", "2", "--epochs", "2",
            "--device", "cpu")
    run = hgsearch("run", *args, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "conventional cannot fit 25,000,000 parameters" in run.stdout
    study = "superres-npz-25M"
    front = hgsearch("frontier", "--plot", "--data-dir", str(data), cwd=tmp_path, env=env)
    assert front.returncode == 0, front.stderr
    rows = _table(tmp_path, study, "frontier.csv")
    assert set(map(tuple, rows[["d_in", "d_out"]].values.tolist())) == {(1024, 4096)}
    assert (rows["params"] <= 25_000_000).all()
    rep = hgsearch("report", "--data-dir", str(data), cwd=tmp_path, env=env)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "results" / study / "report.html").read_text().count("<img") >= 3
    classify = hgsearch("run", *args, "--task", "classify", "--study", "c", cwd=tmp_path, env=env)
    assert classify.returncode == 1 and "classify task needs class labels" in classify.stderr
