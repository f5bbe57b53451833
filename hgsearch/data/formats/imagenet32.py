"""Downsampled ImageNet 32x32 npz batches, read with allow_pickle=False into one preallocated array."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from hgsearch.errors import DataError

TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
TEST_FILE = "val_data.npz"
_CHUNK = 1 << 20


def _rows(path: Path) -> int:
    """Images in a batch, read from the .npy header alone so 1.28M images need not sit in memory twice."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not an ImageNet-32 npz batch with a 'data' array ({e}); "
                        "delete it and unzip the official archive again") from e
    return shape[0] if shape else 0


def _hash_file(path: Path, digest: hashlib._Hash) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def _read_split(paths: list[Path], digest: hashlib._Hash) -> tuple[np.ndarray, np.ndarray]:
    counts = [_rows(path) for path in paths]
    images = np.empty((sum(counts), 3, 32, 32), np.uint8)
    labels = np.empty(sum(counts), np.int64)
    start = 0
    for path, n in zip(paths, counts, strict=True):
        _hash_file(path, digest)
        try:
            with np.load(path, allow_pickle=False) as batch:
                data, batch_labels = batch["data"], batch["labels"]
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: unreadable ImageNet-32 batch ({e}); "
                            "delete it and unzip the official archive again") from e
        if data.dtype != np.uint8 or data.shape != (n, 3072):
            raise DataError(f"{path}: 'data' must be uint8 ({n}, 3072), got {data.dtype} {data.shape}; "
                            "check it is the 32x32 variant")
        valid = (batch_labels.shape == (n,) and batch_labels.dtype.kind in "iu"
                 and (n == 0 or 1 <= batch_labels.min() and batch_labels.max() <= 1000))
        if not valid:
            raise DataError(f"{path}: 'labels' must be {n} integers in 1..1000; check the file is ImageNet-32")
        images[start:start + n] = data.reshape(n, 3, 32, 32)  # rows are channel-major, like CIFAR
        labels[start:start + n] = batch_labels - 1  # the files count classes from 1
        start += n
    return images, labels


def load_imagenet32(paths: list[Path], digest: hashlib._Hash) -> list[tuple[np.ndarray, np.ndarray]]:
    """train_data_batch_1..10 then val_data into [(train images, labels), (val images, labels)]."""
    return [_read_split(paths[:-1], digest), _read_split(paths[-1:], digest)]
