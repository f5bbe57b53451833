"""Your own images as NumPy arrays in one .npz file, read with allow_pickle=False and checked array by array.

The file holds x_train and x_test, and optionally y_train and y_test (both or neither):
- images: uint8 (0..255), or floats (float16/32/64) in [0, 1] or in [0, 255] (scaled by 255 when no value
  of x_train and x_test exceeds 1, then rounded); no NaN or infinity; no other dtype.
- layouts: (N, H, W) grey, (N, H, W, C) channels last, or (N, C, H, W) channels first, with C = 1 (grey)
  or 3 (RGB); channels last is taken when the last axis is 1 or 3, else channels first. x_train and
  x_test must have the same image shape.
- labels: integer class indices >= 0, one per image ((N,) or (N, 1)).
The checksum is the sha256 of the file's bytes (`sha256sum data.npz`).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hgsearch.errors import DataError

IMAGES = ("x_train", "x_test")
LABELS = ("y_train", "y_test")
LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
_CHUNK = 1 << 20
_ROWS = 4096  # images converted at a time: a float64 copy of the whole set would double the peak memory


def checksum(path: Path) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from e
    return digest.hexdigest()


def _nchw(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """x as (N, C, H, W), a view; refuses any other rank or channel count."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    what = f"has {x.shape[-1]} channels" if x.ndim == 4 and x.shape[-1] == 4 else f"is {x.ndim}-D {x.shape}"
    raise DataError(f"{path}: {key} {what}; images must be {LAYOUTS} (drop an alpha channel)")


def _scale(path: Path, arrays: dict[str, np.ndarray]) -> float:
    """255 for floats in [0, 1], 1 for floats in [0, 255], over x_train and x_test together."""
    top = 0.0
    for key, x in arrays.items():
        if x.dtype == np.uint8 or x.size == 0:
            continue
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            kind = "NaN" if np.isnan(x[first]).any() else "infinity"
            raise DataError(f"{path}: {key} contains {kind} (first in image {first}); replace it before searching")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 255:
            raise DataError(f"{path}: {key} values lie in [{low:g}, {high:g}]; float images must lie in [0, 1] "
                            "or [0, 255]")
        top = max(top, high)
    return 255.0 if top <= 1 else 1.0


def _to_uint8(x: np.ndarray, scale: float) -> np.ndarray:
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), _ROWS):
        part = x[start:start + _ROWS].astype(np.float64) * scale
        out[start:start + _ROWS] = np.rint(part)
    return out


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "iu" or y.dtype == np.bool_:
        raise DataError(f"{path}: {key} is {y.dtype}; labels must be integer class indices "
                        f"(y.astype(np.int64) if they are whole numbers)")
    if y.shape != (n,):
        raise DataError(f"{path}: {key} has shape {y.shape} but x_{key[2:]} has {n} images; "
                        "give one label per image")
    if n and y.min() < 0:
        raise DataError(f"{path}: {key} has negative labels ({int(y.min())}); labels must be class indices 0, 1, ...")
    return y.astype(np.int64)


def read(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], bool]:
    """((train images NCHW uint8, labels), (test images, labels), labelled); labels are -1 without labels."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz archive; save x_train and x_test in one file "
                            "with np.savez")
        with loaded as f:
            keys = set(f.files)
            missing = [k for k in IMAGES if k not in keys]
            if missing:
                found = ", ".join(sorted(keys)) or "nothing"
                raise DataError(f"{path}: no {' or '.join(missing)} array (it holds {found}); save your images as "
                                "x_train and x_test, labels (optional) as y_train and y_test")
            given = [k for k in LABELS if k in keys]
            if len(given) == 1:
                other = next(k for k in LABELS if k not in keys)
                raise DataError(f"{path}: has {given[0]} but no {other}; give labels for both splits or neither")
            arrays = {k: f[k] for k in (*IMAGES, *given)}
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        why = "holds Python objects, which are not read (allow_pickle=False)" if "allow_pickle" in str(e) else \
            f"is not a readable .npz file ({type(e).__name__}: {e})"
        raise DataError(f"{path}: {why}; save plain arrays with np.savez") from e
    images = {}
    for key in IMAGES:
        x = arrays[key]
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise DataError(f"{path}: {key} is {x.dtype}; images must be uint8 (0..255) or floats in [0, 1] or "
                            "[0, 255] (x.astype(np.uint8) if its values lie in 0..255)")
        images[key] = _nchw(path, key, x)
    (train, test) = (images[k] for k in IMAGES)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{path}: x_train images are {_shape(train)} but x_test images {_shape(test)}; "
                        "both splits must have one image shape")
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{path}: {'x_train' if len(train) == 0 else 'x_test'} holds no images")
    scale = _scale(path, images)
    train, test = _to_uint8(train, scale), _to_uint8(test, scale)
    if given:
        y_train, y_test = (_labels(path, k, arrays[k], len(x)) for k, x in zip(LABELS, (train, test), strict=True))
    else:
        y_train, y_test = np.full(len(train), -1, np.int64), np.full(len(test), -1, np.int64)
    return (train, y_train), (test, y_test), bool(given)


def _shape(x: np.ndarray) -> str:
    c, h, w = x.shape[1:]
    return f"{h}x{w}x{c}"
