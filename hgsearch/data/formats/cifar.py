"""CIFAR-10 python batches, unpickled with a whitelist so a hostile file cannot run code."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hgsearch.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for _codecs.encode, which Python 3 protocol-2 pickles call to rebuild bytes objects."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# numpy's array rebuilder, taken from numpy itself so it works whichever module path the pickle names.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
# Every global an official (Python 2) or re-pickled (Python 3, protocol 2) batch can name; nothing else.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals in _ALLOWED and refuses every other one."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str fields arrive as bytes, as the CIFAR site says
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(f"{self.path}: pickle refers to {module}.{name}, which no CIFAR batch does; "
                            "refusing to load it, replace it with the official file")
        return _ALLOWED[(module, name)]


def read_batch(path: Path, digest: hashlib._Hash) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (images (N, 3, 32, 32) uint8, labels int64); its bytes go into digest."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from e
    digest.update(raw)
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), path).load()
        fields = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = fields["data"], np.asarray(fields["labels"])
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                        "delete it and re-download it") from e
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 (N, 3072) array, got {shape}; check it is CIFAR-10 python")
    valid = (labels.shape == (len(data),) and labels.dtype.kind in "iu"
             and (labels.size == 0 or 0 <= labels.min() and labels.max() <= 9))
    if not valid:
        raise DataError(f"{path}: 'labels' must be {len(data)} integers in 0..9; check it is CIFAR-10, not CIFAR-100")
    # Rows are 1024 red, 1024 green, 1024 blue values: already channel-major, so a reshape suffices.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(paths: list[Path], digest: hashlib._Hash) -> list[tuple[np.ndarray, np.ndarray]]:
    """data_batch_1..5 then test_batch into [(train images, labels), (test images, labels)]."""
    batches = [read_batch(path, digest) for path in paths]
    train = batches[:-1]
    return [
        (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        batches[-1],
    ]
