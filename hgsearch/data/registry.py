"""Image datasets as uint8 arrays: one registry, offline-first lookup, optional verified download.

load_dataset(name, data_dir) takes the first directory that holds all of the dataset's files:
  1. data_dir, when given (then nothing else is searched);
  2. $HGSEARCH_DATA_DIR/<name>;
  3. known system locations: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist);
  4. the cache, $XDG_CACHE_HOME/hgsearch/<name> (default ~/.cache/hgsearch/<name>);
  5. only with download=True: a download from the canonical source, or from $HGSEARCH_MIRROR/<name>/<file>
     when that is set, into data_dir if given, else the cache; files are kept only if their md5 matches
     the published one.
Nothing found means a DataError naming the files and the directory to put them in.

Dataset.checksum is the sha256 of the dataset's files concatenated in the order of _SPECS[name].files,
after removing any gzip layer, so a recompressed copy (Debian's) has the same checksum as the original:
    zcat train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz | sha256sum
CIFAR-10: cat data_batch_1 ... data_batch_5 test_batch | sha256sum;
ImageNet-32: cat train_data_batch_1.npz ... train_data_batch_10.npz val_data.npz | sha256sum.

Your own images (USER_SOURCES) are found only where --data-dir says, with no lookup and no download:
npz is one .npz file (data_dir is the file, or a directory holding exactly one), folder a directory
of image files; formats/npz.py and formats/folder.py say what they accept and what their checksums
cover. Only they can be resized (image_size); without class labels their Dataset has labelled=False.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hgsearch.data.download import extract, fetch
from hgsearch.data.formats import cifar, folder, imagenet32, npz
from hgsearch.data.formats.idx import load_idx_set, read_idx, variants
from hgsearch.errors import DataError, UsageError
from hgsearch.names import DATASETS

__all__ = ["DATASETS", "DEFAULT_DATASET", "USER_SOURCES", "Dataset", "ImageSet", "cache_dir", "load_dataset",
           "read_idx"]


# eq=False: the generated __eq__ would compare arrays elementwise and fail; identity is what we want.
@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split: images (N, C, H, W) uint8 with C = 1 or 3, labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} {self.labels.shape}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's official train and test splits, where they were read from and their checksum."""

    name: str
    train: ImageSet
    test: ImageSet
    checksum: str  # see the module docstring for exactly which bytes it covers
    source: str
    labelled: bool = True  # False: no class labels (labels are -1), so no classify task

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self.train.images.shape[1:]


Reader = Callable[[list[Path], Any], list[tuple[np.ndarray, np.ndarray]]]


def _exact(name: str) -> tuple[str, ...]:
    return (name,)


@dataclass(frozen=True)
class _Spec:
    """How to find, fetch and read one dataset."""

    files: tuple[str, ...]  # in checksum order
    wanted: str  # the files, as a person should be told about them
    read: Reader
    names: Callable[[str], tuple[str, ...]] = _exact  # the names each file may have on disk
    subdirs: tuple[str, ...] = ("",)  # where under a data directory the files may sit
    classes: int | None = None  # IDX files don't bound their labels, so the registry does
    system_dirs: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()  # base URLs, tried in order
    downloads: tuple[tuple[str, str], ...] = ()  # (file name, published md5) fetched from a base URL
    archive_dir: str = ""  # if set, each download is a tar holding `files` under this directory
    hint: str = ""  # where else to get the files; ends every "not found" message


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_IDX_WANTED = ", ".join(_IDX_FILES) + " (gzip or raw)"

_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        _IDX_FILES, _IDX_WANTED, load_idx_set, names=variants, classes=10,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",),
        downloads=tuple(zip(_IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                            strict=True)),
        hint="the Debian package dataset-fashion-mnist provides it offline",
    ),
    "mnist": _Spec(
        _IDX_FILES, _IDX_WANTED, load_idx_set, names=variants, classes=10,
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist"),
        downloads=tuple(zip(_IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                            strict=True)),
    ),
    "cifar10": _Spec(
        (*cifar.TRAIN_FILES, cifar.TEST_FILE), "data_batch_1..5 and test_batch (from cifar-10-python.tar.gz)",
        cifar.load_cifar10, subdirs=("", "cifar-10-batches-py"),
        urls=("https://www.cs.toronto.edu/~kriz",),
        downloads=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        archive_dir="cifar-10-batches-py",
    ),
    "imagenet32": _Spec(
        (*imagenet32.TRAIN_FILES, imagenet32.TEST_FILE), "train_data_batch_1..10.npz and val_data.npz",
        imagenet32.load_imagenet32, subdirs=("", "Imagenet32_train_npz", "Imagenet32_val_npz"),
        hint="ImageNet requires a login: get Imagenet32_train_npz.zip and Imagenet32_val_npz.zip from "
               "https://image-net.org/download-images and unzip both into one directory",
    ),
    "idx": _Spec(
        _IDX_FILES, _IDX_WANTED, load_idx_set, names=variants,
        hint="idx means your own MNIST-format set (KMNIST, EMNIST, ...) in the standard file names",
    ),
}
USER_SOURCES = ("npz", "folder")  # your own images, read from --data-dir only (see the module docstring)
assert (*_SPECS, *USER_SOURCES) == DATASETS, "names.DATASETS lists the registry's datasets, in its order"
DEFAULT_DATASET = "fashion-mnist"


def cache_dir(name: str) -> Path:
    """Where downloads of dataset `name` go: $XDG_CACHE_HOME/hgsearch/<name>, default ~/.cache/hgsearch/<name>."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "hgsearch" / name


def _locate(spec: _Spec, directory: Path) -> tuple[list[Path], list[str]]:
    """The paths of spec's files under directory, and the names of those missing."""
    found, missing = [], []
    for name in spec.files:
        hits = [p for sub in spec.subdirs for n in spec.names(name) if (p := directory / sub / n).is_file()]
        if hits:
            found.append(hits[0])
        else:
            missing.append(name)
    return found, missing


def _search_dirs(name: str, spec: _Spec, data_dir: str | Path | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    root = os.environ.get("HGSEARCH_DATA_DIR")
    env = [Path(root).expanduser() / name] if root else []
    return env + [Path(d) for d in spec.system_dirs] + [cache_dir(name)]


def _download(name: str, spec: _Spec, target: Path) -> None:
    mirror = os.environ.get("HGSEARCH_MIRROR")
    bases = (f"{mirror.rstrip('/')}/{name}",) if mirror else spec.urls
    for remote, md5 in spec.downloads:
        dest, errors = target / remote, []
        for base in bases:
            try:
                fetch(f"{base}/{remote}", dest, md5)
                break
            except DataError as e:
                errors.append(str(e))
        else:
            # One line that still says how to proceed offline: which files, into which directory.
            raise DataError(f"{name}: download failed ({' | '.join(errors)}); to proceed without the network "
                            f"put {spec.wanted} in {target}")
        if spec.archive_dir:
            extract(dest, {f"{spec.archive_dir}/{f}": target / spec.archive_dir / f for f in spec.files})
            dest.unlink()  # the extracted files are what the loader reads; no need to keep 170 MB twice


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 image_size: int = 0) -> Dataset:
    """Load dataset `name` (see DATASETS) from the first place that has it; see the module docstring.

    image_size > 0 resizes every image to image_size x image_size (npz and folder only).
    """
    if name in USER_SOURCES:
        if download:
            raise UsageError(f"--download fetches the named datasets; {name} reads your own files from --data-dir")
        if data_dir is None:
            what = "an .npz file (or a directory holding one)" if name == "npz" else \
                "a folder holding train/ and test/ image folders"
            raise UsageError(f"--dataset {name} needs --data-dir: {what}; see docs/datasets.md")
        path = Path(data_dir).expanduser().resolve()
        return _load_npz(*_npz_key(_npz_file(path)), image_size) if name == "npz" else \
            _load_folder(folder.scan(path), image_size)
    if image_size:
        raise UsageError(f"--image-size resizes your own images (--dataset npz or folder), not {name}")
    spec = _SPECS.get(name)
    if spec is None:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    dirs = _search_dirs(name, spec, data_dir)
    for directory in dirs:
        if not _locate(spec, directory)[1]:
            return _load(name, directory.resolve())
    target = dirs[0] if data_dir is not None else cache_dir(name)
    if download and not spec.downloads:
        raise DataError(f"{name} cannot be downloaded: {spec.hint}")
    if download:
        _download(name, spec, target)
        return _load(name, target.resolve())
    retry = ", or rerun with --download" if spec.downloads else ""
    hint = f"; {spec.hint}" if spec.hint else ""
    if data_dir is not None:
        what = "does not exist" if not target.is_dir() else "lacks " + ", ".join(_locate(spec, target)[1])
        raise DataError(f"{name}: data directory {target} {what}; put {spec.wanted} there{retry}{hint}")
    raise DataError(f"{name}: no copy found (searched {', '.join(map(str, dirs))}); put {spec.wanted} "
                    f"in {target} or pass --data-dir DIR holding them{retry}{hint}")


def _read_only(array: np.ndarray) -> np.ndarray:
    # Loaded datasets are cached and shared between callers, so nobody may modify them in place.
    array.flags.writeable = False
    return array


# Datasets kept loaded per process: a search reads one, the tests a few; bounded, as ImageNet-32 alone is 3.9 GB.
CACHED_DATASETS = 4


@functools.lru_cache(maxsize=CACHED_DATASETS)
def _load(name: str, directory: Path) -> Dataset:
    """Read and validate one dataset from one directory; cached, since ImageNet-32 takes a while."""
    spec = _SPECS[name]
    paths, _ = _locate(spec, directory)
    digest = hashlib.sha256()
    train, test = (ImageSet(_read_only(x), _read_only(y)) for x, y in spec.read(paths, digest))
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{directory}: train images are {train.images.shape[1:]} but test images "
                        f"{test.images.shape[1:]}; the files come from different datasets")
    # Only the IDX specs set classes, so paths[1] and paths[3] are the label files.
    for split, label_path in ((train, paths[1]), (test, paths[3])):
        if spec.classes and split.labels.size and not 0 <= split.labels.min() <= split.labels.max() < spec.classes:
            raise DataError(f"{label_path}: labels must lie in 0..{spec.classes - 1}; "
                            f"check the file belongs to {name}")
    return Dataset(name, train, test, digest.hexdigest(), str(directory))


def _npz_file(path: Path) -> Path:
    """The .npz file that --data-dir names: the path itself, or the only .npz in that directory."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path} does not exist; pass --data-dir FILE.npz (x_train, x_test, optional y_train, "
                        "y_test)")
    found = sorted(path.glob("*.npz"))
    if len(found) != 1:
        what = f"holds {len(found)} .npz files ({', '.join(p.name for p in found[:3])})" if found else \
            "holds no .npz file"
        raise DataError(f"{path} {what}; pass --data-dir FILE.npz to name one")
    return found[0]


def _npz_key(path: Path) -> tuple[Path, int, int]:
    """(path, size, modification time): a file rewritten since it was cached is read again."""
    st = path.stat()
    return path, st.st_size, st.st_mtime_ns


def _user_dataset(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  checksum: str, source: Path, labelled: bool) -> Dataset:
    sets = (ImageSet(_read_only(x), _read_only(y)) for x, y in (train, test))
    return Dataset(name, *sets, checksum, str(source), labelled)


@functools.lru_cache(maxsize=CACHED_DATASETS)
def _load_npz(path: Path, _size: int, _mtime_ns: int, image_size: int) -> Dataset:
    """Read, check and convert an .npz file; cached per process while the file is unchanged."""
    checksum = npz.checksum(path)
    train, test, labelled = npz.read(path)
    if image_size:
        train, test = ((folder.resize(x, image_size), y) for x, y in (train, test))
    return _user_dataset("npz", train, test, checksum, path, labelled)


FOLDER_CACHE = "folder"  # cache_dir(FOLDER_CACHE) holds one decoded file per image folder and size


@functools.lru_cache(maxsize=CACHED_DATASETS)
def _load_folder(layout: folder.Layout, image_size: int) -> Dataset:
    """An image folder, decoded (or taken from the cache while no file changed); cached per process."""
    name = hashlib.sha256(f"{layout.root}\0{image_size}".encode()).hexdigest()[:16]
    cache = cache_dir(FOLDER_CACHE) / f"{name}.npz"
    arrays = folder.load_cached(cache, layout, image_size)
    if arrays is None:
        arrays = folder.read(layout, image_size)
        folder.save_cache(cache, layout, image_size, arrays)
    x_train, y_train, x_test, y_test, checksum = arrays
    return _user_dataset("folder", (x_train, y_train), (x_test, y_test), checksum, layout.root,
                         bool(layout.classes))
