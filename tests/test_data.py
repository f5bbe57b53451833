"""Tests for hgsearch.data.registry: IDX reading and validation, the registry, CIFAR-10 and ImageNet-32 readers."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from hgsearch.data import registry as data
from hgsearch.data.registry import load_dataset, read_idx
from hgsearch.errors import DataError, UsageError

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CHECKSUM = "14410854cf7a289477dcfc7df3f8ec24741e281cdcc425ede0d9a748ca630214"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST test files not found at {MNIST_DIR}")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's data root, cache and mirror out of every test."""
    monkeypatch.delenv("HGSEARCH_DATA_DIR", raising=False)
    monkeypatch.delenv("HGSEARCH_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx_set(directory: Path, n_train: int = 6, n_test: int = 4, hw: int = 28, gz: bool = True,
                  classes: int = 10) -> list[bytes]:
    """Write four small IDX files; return their decompressed bytes in checksum order."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, hw, hw)), rng.integers(0, classes, n_train),
              rng.integers(0, 256, (n_test, hw, hw)), rng.integers(0, classes, n_test)]
    directory.mkdir(parents=True, exist_ok=True)
    raws = [idx_bytes(a) for a in arrays]
    for name, raw in zip(IDX_NAMES, raws, strict=True):
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return raws


# --- IDX reader -------------------------------------------------------------------------------------------

@needs_mnist
def test_real_mnist_test_files_match_published_md5_and_read_correctly() -> None:
    published = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                 "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    for name, md5 in published.items():
        assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == md5
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    assert labels.shape == (10000,) and labels.min() == 0 and labels.max() == 9
    # The well-known class counts of the MNIST test split catch any off-by-one in the header handling.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]


@needs_mnist
def test_mnist_test_split_through_load_dataset(tmp_path: Path) -> None:
    """Real t10k files (linked, not copied) plus small synthetic train files in raw, dotted naming."""
    raws = write_idx_set(tmp_path / "m", gz=False)
    for name in IDX_NAMES[:2]:
        (tmp_path / "m" / name).rename(tmp_path / "m" / name.replace("-idx", ".idx"))
    for name in IDX_NAMES[2:]:
        (tmp_path / "m" / name).unlink()
        (tmp_path / "m" / f"{name}.gz").symlink_to(MNIST_DIR / f"{name}.gz")
    ds = load_dataset("mnist", tmp_path / "m")
    assert ds.test.images.shape == (10000, 1, 28, 28) and ds.test.images.dtype == np.uint8
    assert ds.test.labels.dtype == np.int64 and 0 <= ds.test.labels.min() <= ds.test.labels.max() <= 9
    real = [gzip.decompress((MNIST_DIR / f"{n}.gz").read_bytes()) for n in IDX_NAMES[2:]]
    assert ds.checksum == hashlib.sha256(b"".join(raws[:2] + real)).hexdigest()


@needs_mnist
def test_mnist_dir_with_only_test_files_names_the_missing_train_files() -> None:
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz;"):
        load_dataset("mnist", MNIST_DIR)


def test_gzip_is_detected_by_magic_not_by_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "gzipped-idx3-ubyte").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "raw.gz").write_bytes(idx_bytes(array))
    for name in ("gzipped-idx3-ubyte", "raw.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_wider_idx_types_are_byte_swapped_to_native(tmp_path: Path) -> None:
    array = np.array([[1, -2], [300, -32768]], dtype=np.int16)
    (tmp_path / "x").write_bytes(idx_bytes(array, code=0x0B))
    out = read_idx(tmp_path / "x")
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


GOOD = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))


@pytest.mark.parametrize("content, message", [
    (GOOD[:-7], r"truncated: header promises \(3, 4, 5\) = 60 bytes but 53 follow"),
    (GOOD[:10], "IDX header truncated"),
    (GOOD + b"\0\0\0", "3 trailing bytes"),
    (b"\x01" + GOOD[1:], "not an IDX file"),
    (b"", "not an IDX file"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "unknown IDX type code 0x07"),
    (gzip.compress(GOOD)[:-12], "corrupt or truncated gzip stream"),
    (gzip.compress(GOOD)[:12] + b"\xff" * 8 + gzip.compress(GOOD)[20:], "corrupt or truncated gzip stream"),
    (gzip.compress(GOOD)[:-8] + b"\0\0\0\0" + gzip.compress(GOOD)[-4:], "corrupt or truncated gzip stream"),
], ids=["short-payload", "short-header", "trailing", "magic", "empty", "dtype", "gzip-cut", "gzip-garbled",
        "gzip-crc"])
def test_malformed_idx_gives_one_line_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert re.search(r"(delete it and re-download it|check you passed the right file)$", text)  # what to do


def test_missing_idx_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read .*nope"):
        read_idx(tmp_path / "nope")


# --- registry and resolution -------------------------------------------------------------------------------

@needs_fashion
def test_fashion_mnist_loads_offline_from_debian_with_stable_checksum() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.source == str(FASHION_DIR)
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.shape == (1, 28, 28) and ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert np.bincount(ds.train.labels).tolist() == [6000] * 10
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.checksum == FASHION_CHECKSUM
    assert load_dataset("fashion-mnist") is ds  # cached: repeat calls must not re-read 47 MB
    assert data.DEFAULT_DATASET == data.DATASETS[0] == "fashion-mnist"
    with pytest.raises(ValueError, match="read-only"):
        ds.train.labels[0] = 1


def test_unknown_dataset_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'svhn'; choose one of: fashion-mnist, mnist") as info:
        load_dataset("svhn")
    assert info.value.exit_code == 2


def test_nothing_found_names_files_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    text = str(info.value)
    assert "train-images-idx3-ubyte.gz" in text and str(tmp_path / "cache/hgsearch/mnist") in text
    assert "--data-dir" in text and "--download" in text
    with pytest.raises(DataError, match="idx means your own MNIST-format set"):
        load_dataset("idx")
    with pytest.raises(DataError, match=f"data directory {tmp_path / 'absent'} does not exist"):
        load_dataset("mnist", tmp_path / "absent")


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "cache/hgsearch/mnist", n_train=3)
    assert load_dataset("mnist").source == str(tmp_path / "cache/hgsearch/mnist")
    write_idx_set(tmp_path / "root/mnist", n_train=5)
    monkeypatch.setenv("HGSEARCH_DATA_DIR", str(tmp_path / "root"))
    assert len(load_dataset("mnist").train.labels) == 5  # the env root beats the cache
    write_idx_set(tmp_path / "explicit", n_train=7)
    assert len(load_dataset("mnist", tmp_path / "explicit").train.labels) == 7  # data_dir beats both
    if FASHION_DIR.is_dir():
        write_idx_set(tmp_path / "root/fashion-mnist", n_train=2)
        assert load_dataset("fashion-mnist").source == str(tmp_path / "root/fashion-mnist")  # env beats Debian


def test_idx_dataset_accepts_any_image_size(tmp_path: Path) -> None:
    raws = write_idx_set(tmp_path / "k", hw=12, classes=49)
    ds = load_dataset("idx", tmp_path / "k")
    assert ds.shape == (1, 12, 12) and ds.train.images.shape == (6, 1, 12, 12)
    assert ds.checksum == hashlib.sha256(b"".join(raws)).hexdigest()
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        load_dataset("mnist", tmp_path / "k")  # 49 classes is fine for idx, not for mnist


def test_swapped_or_mismatched_idx_files_are_rejected(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "a")
    (tmp_path / "a/train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DataError, match="expected 6 integer labels"):
        load_dataset("idx", tmp_path / "a")
    write_idx_set(tmp_path / "b")
    (tmp_path / "b/t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((4, 8, 8), np.uint8))))
    with pytest.raises(DataError, match="different datasets"):
        load_dataset("idx", tmp_path / "b")


# --- CIFAR-10 ---------------------------------------------------------------------------------------------

def write_cifar(directory: Path, n: int = 4) -> list[bytes]:
    """Batches in the official layout: a dict with bytes keys, pickled with protocol 2."""
    directory.mkdir(parents=True, exist_ok=True)
    blobs = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        # channel c of image j is filled with 10 * i + 3 * j + c, so the layout is checkable
        pixels = np.array([[10 * i + 3 * j + c] * 1024 for j in range(n) for c in range(3)], dtype=np.uint8)
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": [(i + j) % 10 for j in range(n)],
                 b"data": pixels.reshape(n, 3072), b"filenames": [f"img_{j}.png".encode() for j in range(n)]}
        blobs.append(pickle.dumps(batch, protocol=2))
        (directory / name).write_bytes(blobs[-1])
    return blobs


def test_cifar10_reads_official_layout(tmp_path: Path) -> None:
    blobs = write_cifar(tmp_path / "c/cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path / "c")  # the extracted-archive subdirectory is found too
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert ds.shape == (3, 32, 32) and ds.train.labels.dtype == np.int64
    assert ds.train.images[5, 2].min() == ds.train.images[5, 2].max() == 10 * 1 + 3 * 1 + 2  # batch 2, image 1, blue
    assert ds.test.labels.tolist() == [5, 6, 7, 8]
    assert ds.checksum == hashlib.sha256(b"".join(blobs)).hexdigest()
    # Loaded datasets are cached and shared, so every array must refuse in-place edits.
    assert not any(a.flags.writeable for a in (ds.train.images, ds.train.labels, ds.test.images, ds.test.labels))


class _Exploit:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, eval], ids=["os.system", "eval"])
def test_cifar10_refuses_pickles_that_call_anything_else(tmp_path: Path, func: object) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(func, payload)}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: pickle refers to .*(system|eval).*refusing"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "integers in 0..9"),
    ({b"labels": [0]}, "KeyError"),
    ([1, 2], "not a readable CIFAR-10 batch"),
])
def test_cifar10_rejects_malformed_batches(tmp_path: Path, batch: object, message: str) -> None:
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", tmp_path)


# --- ImageNet-32 ------------------------------------------------------------------------------------------

def write_imagenet32(directory: Path, n: int = 3) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"train_data_batch_{k}.npz" for k in range(1, 11)] + ["val_data.npz"]
    for i, name in enumerate(names):
        pixels = np.full((n, 3072), i, np.uint8)
        pixels[:, 2048:] = 200  # the blue plane
        np.savez(directory / name, data=pixels, labels=[1 + (100 * i + j) % 1000 for j in range(n)])


def test_imagenet32_reads_npz_batches_with_zero_based_labels(tmp_path: Path) -> None:
    write_imagenet32(tmp_path)
    ds = load_dataset("imagenet32", tmp_path)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
    assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int64
    assert ds.train.labels[:3].tolist() == [0, 1, 2] and ds.test.labels.tolist() == [0, 1, 2]
    assert ds.train.images[29, 0].max() == 9 and ds.train.images[29, 2].min() == 200
    files = sorted(tmp_path.glob("train_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    expected = hashlib.sha256(b"".join(p.read_bytes() for p in [*files, tmp_path / "val_data.npz"]))
    assert ds.checksum == expected.hexdigest()


@pytest.mark.parametrize("fields, message", [
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]}, "integers in 1..1000"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": np.array([{}, {}, {}], dtype=object)},
     "unreadable ImageNet-32 batch"),
    ({"data": np.zeros((3, 1024), np.uint8), "labels": [1, 2, 3]}, "32x32 variant"),
    ({"labels": [1, 2, 3]}, "not an ImageNet-32 npz batch"),
])
def test_imagenet32_rejects_malformed_batches(tmp_path: Path, fields: dict, message: str) -> None:
    write_imagenet32(tmp_path)
    np.savez(tmp_path / "val_data.npz", **fields)
    with pytest.raises(DataError, match=message):
        load_dataset("imagenet32", tmp_path)
