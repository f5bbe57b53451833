"""Tests for verified downloads, served by a local http.server on 127.0.0.1 through HGSEARCH_MIRROR."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hgsearch.data import registry as data
from hgsearch.data.download import fetch
from hgsearch.data.registry import load_dataset
from hgsearch.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared/data"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(root: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory served over HTTP and named by HGSEARCH_MIRROR; the cache lives in tmp_path/cache."""
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.delenv("HGSEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with _serve(root) as url:
        monkeypatch.setenv("HGSEARCH_MIRROR", url)
        yield root


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _publish_mnist(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Serve a small MNIST-format set and make the registry expect exactly its md5s."""
    rng = np.random.default_rng(1)
    blobs = dict(zip(IDX_FILES, [_idx_gz(rng.integers(0, 256, (5, 28, 28))), _idx_gz(rng.integers(0, 10, 5)),
                                 _idx_gz(rng.integers(0, 256, (2, 28, 28))), _idx_gz(rng.integers(0, 10, 2))],
                     strict=True))
    (root / "mnist").mkdir()
    for name, blob in blobs.items():
        (root / "mnist" / name).write_bytes(blob)
    spec = dataclasses.replace(data._SPECS["mnist"], downloads=tuple((n, _md5(b)) for n, b in blobs.items()))
    monkeypatch.setitem(data._SPECS, "mnist", spec)
    return blobs


def test_download_verifies_and_caches(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = _publish_mnist(mirror, monkeypatch)
    with pytest.raises(DataError, match="--download"):
        load_dataset("mnist")  # download=False never touches the network
    ds = load_dataset("mnist", download=True)
    cache = tmp_path / "cache/hgsearch/mnist"
    assert ds.source == str(cache) and ds.train.images.shape == (5, 1, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_FILES)  # no temp files left behind
    expected = hashlib.sha256(b"".join(gzip.decompress(blobs[n]) for n in IDX_FILES)).hexdigest()
    assert ds.checksum == expected
    monkeypatch.delenv("HGSEARCH_MIRROR")
    assert load_dataset("mnist").checksum == expected  # now found offline in the cache


def test_corrupted_download_is_rejected_and_leaves_nothing(mirror: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = _publish_mnist(mirror, monkeypatch)
    tampered = bytearray(blobs["t10k-images-idx3-ubyte.gz"])
    tampered[100] ^= 0xFF
    (mirror / "mnist/t10k-images-idx3-ubyte.gz").write_bytes(bytes(tampered))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz arrived with md5 \w+, expected") as info:
        load_dataset("mnist", download=True)
    assert "\n" not in str(info.value)
    cache = tmp_path / "cache/hgsearch/mnist"
    assert "t10k-images-idx3-ubyte.gz" not in [p.name for p in cache.iterdir()]
    assert not list(cache.glob("*.part"))


def test_download_into_explicit_data_dir(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _publish_mnist(mirror, monkeypatch)
    ds = load_dataset("mnist", tmp_path / "mine", download=True)
    assert ds.source == str(tmp_path / "mine") and not (tmp_path / "cache").exists()


def test_http_errors_and_unreachable_servers_are_data_errors(mirror: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"could not download .*/missing.gz .*\(HTTP 404 "):
        fetch(f"{os.environ['HGSEARCH_MIRROR']}/missing.gz", tmp_path / "out" / "missing.gz", "0" * 32)
    with socket.socket() as sock:  # a port that is bound but not listening refuses connections at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(DataError, match="could not download .*refused"):
            fetch(f"http://127.0.0.1:{port}/x.gz", tmp_path / "out" / "x.gz", "0" * 32, timeout=5)
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason=f"real MNIST files not found at {SHARED_DATA}")
def test_registered_mnist_md5s_accept_the_real_files(tmp_path: Path) -> None:
    md5s = dict(data._SPECS["mnist"].downloads)
    with _serve(SHARED_DATA) as url:
        for name in IDX_FILES[2:]:
            fetch(f"{url}/mnist/{name}", tmp_path / name, md5s[name])
            assert (tmp_path / name).read_bytes() == (SHARED_DATA / "mnist" / name).read_bytes()


def _tar_member(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def test_cifar10_archive_is_downloaded_extracted_and_removed(mirror: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            batch = {b"data": np.full((2, 3072), i, np.uint8), b"labels": [i, 9 - i]}
            _tar_member(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        _tar_member(tar, "cifar-10-batches-py/../../escaped", b"never extracted")
    (mirror / "cifar10").mkdir()
    (mirror / "cifar10/cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    spec = dataclasses.replace(data._SPECS["cifar10"],
                               downloads=(("cifar-10-python.tar.gz", _md5(buffer.getvalue())),))
    monkeypatch.setitem(data._SPECS, "cifar10", spec)
    ds = load_dataset("cifar10", download=True)
    cache = tmp_path / "cache/hgsearch/cifar10"
    assert ds.train.images.shape == (10, 3, 32, 32) and ds.test.labels.tolist() == [5, 4]
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-py"]  # archive removed after extraction
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cache/escaped").exists()


def test_datasets_without_a_public_source_say_how_to_get_them(mirror: Path) -> None:
    with pytest.raises(DataError, match="imagenet32 cannot be downloaded: ImageNet requires a login"):
        load_dataset("imagenet32", download=True)
    with pytest.raises(DataError, match="idx cannot be downloaded: idx means your own"):
        load_dataset("idx", download=True)
