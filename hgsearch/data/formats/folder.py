"""Your own images as a folder of image files, decoded once with Pillow into a uint8 cache.

Layout (torchvision's ImageFolder convention, split in two):
    DIR/train/<class>/**/*.png|jpg|...   and   DIR/test/<class>/**/*   (test/ may be called val/)
or, without labels, the images directly in DIR/train/ and DIR/test/. Classes are the train folder's
class folders in sorted order (label 0, 1, ...); a test class train lacks is refused. Hidden files and
files without an image suffix (IMAGE_SUFFIXES) are skipped. Grey images (Pillow modes 1, L, LA, I;16,
grey palettes) stay one channel and anything else becomes RGB; once one image is colour the whole set is
RGB (grey images repeated into three equal channels). Alpha is dropped. Every image must have the size of
the first, unless image_size resizes each to image_size x image_size (bicubic, antialiased; the aspect
ratio is not kept).

The checksum covers every file read, in order (train, then test; by class, then name): its path
relative to DIR, a NUL byte, its length as 8 little-endian bytes, then its bytes, all into one sha256.

Decoding 100,000 images takes a while (see bench/RESULTS.md), so the decoded arrays are cached, one file
per folder and image size, and reused while no file's path, size or modification time has changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hgsearch.errors import DataError, StorageError
from hgsearch.store.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm")
SPLITS = (("train",), ("test", "val"))
CACHE_VERSION = 1  # bump when what a cache file holds changes; older files are then read again
_GREY = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I"})
_BAR_EVERY = 256  # images between progress-bar updates: 100k redraws would cost more than the decoding


@dataclass(frozen=True)
class File:
    path: Path
    label: int  # -1 without class folders
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Layout:
    """The folder's files, listed (not read): what both the cache key and the reader work from."""

    root: Path
    classes: tuple[str, ...]  # empty: no labels
    train: tuple[File, ...]
    test: tuple[File, ...]

    def key(self, image_size: int) -> str:
        """Changes when any file's path, size or modification time changes, or the image size."""
        digest = hashlib.sha256(f"{CACHE_VERSION}\0{image_size}\0".encode())
        for f in (*self.train, *self.test):
            digest.update(f"{f.path.relative_to(self.root).as_posix()}\0{f.label}\0{f.size}\0{f.mtime_ns}\n".encode())
        return digest.hexdigest()


def _visible(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot read folder {directory}: {e.strerror}; check the path and its permissions") from e


def _files(directory: Path, label: int) -> list[File]:
    """Image files under directory, recursively, in sorted order."""
    out = []
    for e in _visible(directory):
        if e.is_dir():
            out += _files(Path(e.path), label)
        elif e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
            st = e.stat()
            out.append(File(Path(e.path), label, st.st_size, st.st_mtime_ns))
    return out


def _split_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    entries = [e.name for e in _visible(root)]
    found = f"it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}" if entries else "it is empty"
    raise DataError(f"{root}: no {names[0]}/ folder ({found}); put images in {root}/train/<class>/ and "
                    f"{root}/test/<class>/ (or directly in train/ and test/ without labels)")


def _split(directory: Path, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[File]]:
    """(class names, files) of one split; classes=None: train, which defines them."""
    entries = _visible(directory)
    folders = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    if folders and loose:
        raise DataError(f"{directory}: holds both images ({loose[0]}, ...) and folders ({folders[0]}, ...); put every "
                        "image in a class folder, or use no class folders at all")
    if classes is not None and bool(folders) != bool(classes):
        want = "class folders like train/" if classes else "images directly, like train/ (no class folders)"
        raise DataError(f"{directory}: holds {'class folders' if folders else 'images directly'}, but it must hold "
                        f"{want}")
    if not folders:
        files = _files(directory, -1)
        if not files:
            raise DataError(f"{directory}: holds no images ({', '.join(IMAGE_SUFFIXES)}); check the folder")
        return (), files
    own = tuple(folders)
    if classes is not None:
        extra = [c for c in own if c not in classes]
        if extra:
            raise DataError(f"{directory / extra[0]}: class {extra[0]!r} is not among the train classes "
                            f"({', '.join(classes)}); every test class needs training images")
    index = {c: i for i, c in enumerate(classes if classes is not None else own)}
    files = []
    for name in own:
        found = _files(directory / name, index[name])
        if not found:
            raise DataError(f"{directory / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            "remove it or add its images")
        files += found
    return own, files


def scan(root: Path) -> Layout:
    """List the folder's images and classes; refuse a layout that is not one of the module docstring's."""
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'does not exist'}; pass --data-dir DIR "
                        "holding train/ and test/ image folders")
    classes, train = _split(_split_dir(root, SPLITS[0]), None)
    _, test = _split(_split_dir(root, SPLITS[1]), classes)
    return Layout(root, classes, tuple(train), tuple(test))


def _pixels(img: Image.Image, path: Path, image_size: int) -> np.ndarray:
    """One decoded image as (C, H, W) uint8, C = 1 or 3, resized when image_size is set."""
    grey = img.mode in _GREY or (img.mode == "P" and _grey_palette(img))
    if img.mode.startswith("I"):  # 16-bit grey: scale 0..65535 to 0..255
        img = Image.fromarray(np.rint(np.asarray(img, np.float64) / 257).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        raise DataError(f"{path}: a 32-bit float image (mode F); save it as 8- or 16-bit")
    img = img.convert("L" if grey else "RGB")
    if image_size:
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    a = np.asarray(img)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _grey_palette(img: Image.Image) -> bool:
    rgb = np.frombuffer(img.palette.tobytes(), np.uint8) if img.palette and img.palette.mode == "RGB" else None
    return rgb is not None and bool((rgb[0::3] == rgb[1::3]).all() and (rgb[1::3] == rgb[2::3]).all())


def _decode(raw: bytes, path: Path, image_size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # decoding happens here: a truncated or corrupt file fails now, not later
            return _pixels(img, path, image_size)
    except DataError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); replace or remove it") from e


def _bar() -> Progress:
    # Like data.download's bar, on stderr, but only on a terminal and transient: gone when the reading is
    # done (or failed), so a log or an error keeps only its own lines.
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def read(layout: Layout, image_size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Decode every image: (train images NCHW uint8, train labels, test images, test labels, checksum)."""
    digest = hashlib.sha256()
    out: list[np.ndarray] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    with _bar() as bar:
        for name, files in (("train", layout.train), ("test", layout.test)):
            task = bar.add_task(f"reading {layout.root.name}/{name}", total=len(files))
            images: np.ndarray | None = None
            for i, f in enumerate(files):
                try:
                    raw = f.path.read_bytes()
                except OSError as e:
                    raise DataError(f"cannot read {f.path}: {e.strerror}; check its permissions") from e
                digest.update(f"{f.path.relative_to(layout.root).as_posix()}\0".encode())
                digest.update(len(raw).to_bytes(8, "little"))
                digest.update(raw)
                pixels = _decode(raw, f.path, image_size)
                if first is None:
                    first = (f.path, pixels.shape)
                elif pixels.shape[1:] != first[1][1:]:
                    c, h, w = pixels.shape
                    raise DataError(f"{f.path}: {w}x{h} pixels, but {first[0]} is {first[1][2]}x{first[1][1]}; "
                                    "every image must have one size: pass --image-size N to resize all to N x N")
                if images is None:
                    images = np.empty((len(files), *pixels.shape), np.uint8)
                if pixels.shape[0] > images.shape[1]:  # the first colour image: the set becomes RGB
                    images = np.repeat(images, 3, axis=1)
                images[i] = pixels  # a grey image into an RGB set broadcasts to three equal channels
                if i % _BAR_EVERY == _BAR_EVERY - 1:
                    bar.advance(task, _BAR_EVERY)
            bar.update(task, completed=len(files))
            assert images is not None  # scan() refuses an empty split
            out.append(images)
    train, test = out
    if train.shape[1] != test.shape[1]:  # one split has colour images, the other none: make both RGB
        train, test = (np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x for x in (train, test))
    labels = [np.array([f.label for f in files], np.int64) for files in (layout.train, layout.test)]
    return train, labels[0], test, labels[1], digest.hexdigest()


def resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """(N, C, H, W) uint8 images resized to image_size x image_size as read() resizes a file's image."""
    out = np.empty((len(images), images.shape[1], image_size, image_size), np.uint8)
    for i, x in enumerate(images):
        img = Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
        a = np.asarray(img.resize((image_size, image_size), Image.Resampling.BICUBIC))
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


_META = "meta"  # a JSON string in the cache file: key, checksum, classes


def load_cached(cache: Path, layout: Layout, image_size: int) -> tuple[np.ndarray, ...] | None:
    """The cached arrays and checksum when cache holds this layout at this size; None otherwise."""
    try:
        with np.load(cache, allow_pickle=False) as f:
            meta = json.loads(str(f[_META]))
            if meta.get("key") != layout.key(image_size):
                return None
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"], meta["checksum"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None  # missing, from an older version or damaged: read the folder again


def save_cache(cache: Path, layout: Layout, image_size: int, arrays: tuple[np.ndarray, ...]) -> None:
    """Write the decoded arrays atomically; a cache that cannot be written only costs the next run a re-read."""
    x_train, y_train, x_test, y_test, checksum = arrays
    meta = json.dumps({"key": layout.key(image_size), "checksum": checksum, "root": str(layout.root),
                       "classes": list(layout.classes), "image_size": image_size})
    try:
        with atomic_path(cache, ".part") as tmp, tmp.open("wb") as out:
            np.savez(out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, meta=np.array(meta))
    except (OSError, StorageError):  # read-only or full cache directory
        pass
