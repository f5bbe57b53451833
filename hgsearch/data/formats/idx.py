"""IDX reader (the MNIST file format): gzip or raw, strictly validated, one-line errors."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from hgsearch.errors import DataError

# IDX type codes; multi-byte types are big-endian on disk.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def variants(name: str) -> tuple[str, ...]:
    """Names one IDX file goes by: with or without .gz, and the `train-images.idx3-ubyte` dot form."""
    stem = name.removesuffix(".gz")
    dotted = stem.replace("-idx", ".idx")
    return (stem + ".gz", stem, dotted + ".gz", dotted)


def read_bytes(path: Path) -> bytes:
    """The file's contents with any gzip layer removed; gzip is detected by magic bytes, not by name."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e}); delete it and re-download it") from e


def parse(raw: bytes, path: Path) -> np.ndarray:
    """Decode decompressed IDX bytes into an array with the file's own dimensions."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic {raw[:4].hex() or 'empty'}, expected 0000tttd); "
                        "check you passed the right file")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} (0x08 is unsigned byte); the file is corrupt, "
                        "delete it and re-download it")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated or has {ndim} dimensions; delete it and re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    count = math.prod(dims)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated: header promises {dims} = {expected} bytes but {found} follow; "
                        "delete it and re-download it")
    if found > expected:
        raise DataError(f"{path}: {found - expected} trailing bytes after the {dims} array; "
                        "the file is corrupt, delete it and re-download it")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # uint8 stays a zero-copy view of `raw`; wider types are byte-swapped into native order.
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip or raw) and return its array with the dimensions its header declares."""
    path = Path(path)
    return parse(read_bytes(path), path)


def load_idx_set(paths: list[Path], digest: hashlib._Hash) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read train images/labels and test images/labels (in that order) into [(images NCHW, labels)] * 2."""
    arrays = []
    for path in paths:
        raw = read_bytes(path)
        digest.update(raw)
        arrays.append(parse(raw, path))
    splits = []
    for i in (0, 2):
        images, labels, image_path, label_path = arrays[i], arrays[i + 1], paths[i], paths[i + 1]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(f"{image_path}: expected unsigned-byte images (N, H, W), got {images.dtype} "
                            f"{images.shape}; check the file names are not swapped")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise DataError(f"{label_path}: expected {len(images)} integer labels to match {image_path.name}, "
                            f"got {labels.dtype} {labels.shape}; check the files belong together")
        splits.append((images[:, None], labels.astype(np.int64)))
    return splits
