"""Your own images: .npz arrays and image folders (layouts, dtypes, cache, identity) and every bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from hgsearch.data import registry
from hgsearch.data.formats import folder
from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.errors import DataError, UsageError
from hgsearch.store.schema import SETTINGS_KEY
from tests.conftest import smooth_images

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private cache under tmp_path (so 'nothing written' covers it) and no user data root."""
    monkeypatch.delenv("HGSEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def images(n: int, side: int, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, side, side[, 3]) uint8 blobs with distinct colour planes, and labels 0..9."""
    grey, labels = smooth_images(n, side, seed)
    if channels == 1:
        return grey, labels.astype(np.int64)
    return np.stack([grey, grey[:, :, ::-1], 255 - grey], axis=-1), labels.astype(np.int64)


def write_npz(path: Path, n_train: int = 24, n_test: int = 8, side: int = 8, labels: bool = True, **arrays) -> Path:
    x_tr, y_tr = images(n_train, side, seed=0)
    x_te, y_te = images(n_test, side, seed=1)
    base = {"x_train": x_tr, "x_test": x_te, **({"y_train": y_tr, "y_test": y_te} if labels else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{**base, **arrays})
    return path


def write_folder(root: Path, n_train: int = 24, n_test: int = 8, side: int = 8, channels: int = 3,
                 classes: tuple[str, ...] = ("cat", "dog"), suffix: str = ".png") -> Path:
    """DIR/train/<class>/i.png and DIR/test/<class>/i.png (no class folders when classes is empty)."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, _ = images(n, side, channels, seed)
        for i in range(n):
            d = root / split / (classes[i % len(classes)] if classes else "")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i:03d}{suffix}")
    return root


def fresh(name: str, path: Path, **kw) -> registry.Dataset:
    """load_dataset without the per-process caches, as a new process would."""
    registry._load_npz.cache_clear()
    registry._load_folder.cache_clear()
    return load_dataset(name, path, **kw)


# --- npz ----------------------------------------------------------------------------------------------------

def test_npz_layouts_and_float_ranges_give_the_same_uint8_images(tmp_path):
    x, y = images(12, 8, channels=3)
    x_te, y_te = images(6, 8, channels=3, seed=1)
    nchw = x.transpose(0, 3, 1, 2)
    variants = {"nhwc": (x, x_te), "nchw": (nchw, x_te.transpose(0, 3, 1, 2)),
                "unit": (x / 255.0, x_te / 255.0), "byte_float": (x.astype(np.float32), x_te.astype(np.float32))}
    for name, (tr, te) in variants.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=tr, x_test=te, y_train=y, y_test=y_te)
        ds = fresh("npz", path)
        assert ds.train.images.dtype == np.uint8 and np.array_equal(ds.train.images, nchw), name
        assert ds.shape == (3, 8, 8) and ds.labelled and ds.train.labels.tolist() == y.tolist()
        assert ds.checksum == hashlib.sha256(path.read_bytes()).hexdigest()  # `sha256sum data.npz`
    grey = fresh("npz", write_npz(tmp_path / "g" / "data.npz", labels=False))  # a directory with one .npz
    assert grey.shape == (1, 8, 8) and not grey.labelled and (grey.train.labels == -1).all()
    with pytest.raises(DataError, match="classify task needs class labels.*save y_train and y_test"):
        prepare(grey, "classify")
    assert prepare(grey, "superres").d_in == 16


def test_npz_image_size_resizes_and_named_datasets_refuse_it(tmp_path):
    ds = fresh("npz", write_npz(tmp_path / "d.npz", side=8), image_size=4)
    assert ds.shape == (1, 4, 4) and ds.train.images.shape == (24, 1, 4, 4)
    with pytest.raises(UsageError, match="--image-size resizes your own images"):
        load_dataset("mnist", tmp_path, image_size=16)
    with pytest.raises(UsageError, match="--dataset npz needs --data-dir"):
        load_dataset("npz")


def test_non_square_images_keep_their_shape_through_every_task_and_the_flips(tmp_path):
    """Images 6 high and 10 wide (npz, channels last, and a folder of PNGs): (C, H, W) is kept, never made
    square; superres halves each side; the flip augmentation flips each side of the right length."""
    import torch

    x = np.random.default_rng(0).integers(0, 256, (24, 6, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "wide.npz", x_train=x, x_test=x[:8], y_train=np.arange(24) % 2, y_test=np.arange(8) % 2)
    for i in range(24):
        for split in ("train", "test") if i < 8 else ("train",):
            (tmp_path / "wide" / split / "c").mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(tmp_path / "wide" / split / "c" / f"{i:02d}.png")
    for ds in (fresh("npz", tmp_path / "wide.npz"), fresh("folder", tmp_path / "wide")):
        assert ds.shape == (3, 6, 10) and np.array_equal(ds.train.images, x.transpose(0, 3, 1, 2))
        sr = prepare(ds, "superres", val_size=4, augment="flips")
        assert (sr.d_in, sr.d_out, sr.image_shape) == (3 * 3 * 5, 3 * 6 * 10, (3, 6, 10))
        dn = prepare(ds, "denoise", val_size=4, augment="flips")
        assert dn.d_in == dn.d_out == 180 and len(dn.train) == 4 * 20
        _, target = dn.train.batch(torch.tensor([0, 20, 40, 60]))  # one image, unflipped, lr, ud, both
        img = target.view(4, 3, 6, 10)
        assert torch.equal(img[1], img[0].flip(-1)) and torch.equal(img[2], img[0].flip(-2))
        assert torch.equal(img[3], img[0].flip(-1).flip(-2))


# --- folder -------------------------------------------------------------------------------------------------

def test_folder_reads_classes_in_sorted_order_and_keeps_rgb(tmp_path):
    root = write_folder(tmp_path / "imgs", classes=("zebra", "ant"))
    ds = fresh("folder", root)
    assert ds.shape == (3, 8, 8) and ds.labelled
    x, _ = images(24, 8, 3)
    # train/ant/ holds the odd images (sorted by name), train/zebra/ the even ones: ant is label 0.
    order = [*range(1, 24, 2), *range(0, 24, 2)]
    assert np.array_equal(ds.train.images, x[order].transpose(0, 3, 1, 2))
    assert ds.train.labels.tolist() == [0] * 12 + [1] * 12
    plain = fresh("folder", write_folder(tmp_path / "plain", channels=1, classes=()))
    assert plain.shape == (1, 8, 8) and not plain.labelled


def test_folder_mixed_grey_and_colour_becomes_rgb_and_image_size_resizes_mixed_sizes(tmp_path):
    root = write_folder(tmp_path / "imgs", channels=1)
    Image.fromarray(np.full((12, 10, 3), (255, 0, 0), np.uint8)).save(root / "train" / "cat" / "zzz.png")
    with pytest.raises(DataError, match=r"zzz.png: 10x12 pixels, but .*000.png is 8x8.*--image-size"):
        fresh("folder", root)
    ds = fresh("folder", root, image_size=6)
    assert ds.shape == (3, 6, 6)
    red = ds.train.images[12]  # the last cat image, after the 12 cats
    assert red[0].min() > 200 and red[1].max() < 50  # colour kept
    grey = ds.train.images[0]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])  # grey into 3 equal planes


def test_folder_is_decoded_once_then_read_from_the_cache_until_a_file_changes(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imgs")
    first = fresh("folder", root)
    cached = list((tmp_path / "cache" / "hgsearch" / "folder").glob("*.npz"))
    assert len(cached) == 1

    def no_decoding(*_args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder, "_decode", no_decoding)
    again = fresh("folder", root)
    assert again.checksum == first.checksum and np.array_equal(again.train.images, first.train.images)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    img = root / "test" / "dog" / "001.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    changed = fresh("folder", root)
    assert changed.checksum != first.checksum and changed.test.images[4].max() == 0  # test/dog/001.png
    assert list((tmp_path / "cache" / "hgsearch" / "folder").glob("*.npz")) == cached  # replaced, not added
    # The checksum covers paths and bytes: documented in formats/folder.py, reproduced here by hand.
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for p in sorted((root / split).rglob("*.png")):
            raw = p.read_bytes()
            digest.update(f"{p.relative_to(root).as_posix()}\0".encode() + len(raw).to_bytes(8, "little") + raw)
    assert changed.checksum == digest.hexdigest()


# --- bad input: one line naming the file and what is wrong, non-zero exit, no traceback, nothing written -----

def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in sorted(root.rglob("*"))}


def _npz(name: str, **arrays) -> callable:
    def make(d: Path) -> Path:
        path = d / f"{name}.npz"
        x_tr, y_tr = images(10, 8)
        x_te, y_te = images(4, 8, seed=1)
        np.savez(path, **{k: v for k, v in {"x_train": x_tr, "x_test": x_te, "y_train": y_tr, "y_test": y_te,
                                            **arrays}.items() if v is not None})
        return path
    return make


def _nan(d: Path) -> Path:
    x = images(10, 8)[0] / 255.0
    x[3, 2, 2] = np.nan
    return _npz("nan", x_train=x, x_test=images(4, 8)[0] / 255.0)(d)


def _folder_then(damage) -> callable:
    def make(d: Path) -> Path:
        root = write_folder(d / "imgs", n_train=12, n_test=4)
        damage(root)
        return root
    return make


def _truncate(root: Path) -> None:
    p = root / "train" / "dog" / "003.png"
    p.write_bytes(p.read_bytes()[:60])


def _resize_one(root: Path) -> None:
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "train" / "dog" / "005.png")


def _test_class(root: Path) -> None:
    (root / "test" / "zebra").mkdir()
    (root / "train" / "cat" / "000.png").rename(root / "test" / "zebra" / "000.png")


def _garbage(d: Path) -> Path:
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    return d / "bad.npz"


def _empty(d: Path) -> Path:
    (d / "empty").mkdir()
    return d / "empty"


def _empty_class(root: Path) -> None:
    (root / "train" / "bird").mkdir()


BAD = [
    # (id, dataset, make the input under a directory -> the path for --data-dir, extra args, exit code, text)
    ("empty folder", "folder", _empty, [], 1, "empty: no train/ folder (it is empty)"),
    ("empty class", "folder", _folder_then(_empty_class), [], 1, "bird: class folder holds no images"),
    ("mixed sizes", "folder", _folder_then(_resize_one), [], 1,
     "005.png: 8x9 pixels, but {path}/train/cat/000.png is 8x8; every image must have one size: pass --image-size"),
    ("corrupt image", "folder", _folder_then(lambda r: (r / "test/cat/000.png").write_bytes(b"\x89PNG junk")),
     [], 1, "test/cat/000.png: not a readable image (UnidentifiedImageError"),
    ("truncated image", "folder", _folder_then(_truncate), [], 1, "train/dog/003.png: not a readable image"),
    ("test class", "folder", _folder_then(_test_class), [], 1,
     "test/zebra: class 'zebra' is not among the train classes (cat, dog)"),
    ("no labels", "folder", lambda d: write_folder(d / "imgs", n_train=12, n_test=4, classes=()),
     ["--task", "classify"], 1, "the classify task needs class labels and this data has none: put the images"),
    ("unreadable npz", "npz", _garbage, [], 1, "bad.npz: is not a readable .npz file"),
    ("object npz", "npz", _npz("obj", x_train=np.array([None, 1], dtype=object)), [], 1,
     "obj.npz: holds Python objects, which are not read (allow_pickle=False)"),
    ("int dtype", "npz", _npz("int", x_train=images(10, 8)[0].astype(np.int64)), [], 1,
     "int.npz: x_train is int64; images must be uint8 (0..255) or floats"),
    ("bool dtype", "npz", _npz("bool", x_test=np.zeros((4, 8, 8), bool)), [], 1, "bool.npz: x_test is bool"),
    ("rank", "npz", _npz("flat", x_train=images(10, 8)[0].reshape(10, 64)), [], 1,
     "flat.npz: x_train is 2-D (10, 64); images must be (N, H, W), (N, H, W, C) or (N, C, H, W)"),
    ("alpha", "npz", _npz("rgba", x_train=np.zeros((10, 8, 8, 4), np.uint8)), [], 1, "x_train has 4 channels"),
    ("range", "npz", _npz("range", x_train=images(10, 8)[0] / 127.5 - 1), [], 1,
     "range.npz: x_train values lie in [-1, 1]; float images must lie in [0, 1] or [0, 255]"),
    ("shapes", "npz", _npz("shapes", x_test=images(4, 6)[0]), [], 1,
     "shapes.npz: x_train images are 8x8x1 but x_test images 6x6x1"),
    ("nan", "npz", _nan, [], 1, "nan.npz: x_train contains NaN (first in image 3)"),
    ("label length", "npz", _npz("ylen", y_train=np.arange(5)), [], 1,
     "ylen.npz: y_train has shape (5,) but x_train has 10 images"),
    ("label dtype", "npz", _npz("yfloat", y_train=np.ones(10)), [], 1, "yfloat.npz: y_train is float64"),
    ("one label array", "npz", _npz("ytr", y_test=None), [], 1, "ytr.npz: has y_train but no y_test"),
    ("missing x_test", "npz", _npz("nox", x_test=None), [], 1, "nox.npz: no x_test array (it holds x_train"),
    ("two npz files", "npz", lambda d: (_npz("a")(d), _npz("b")(d)) and d, [], 1,
     "holds 2 .npz files (a.npz, b.npz); pass --data-dir FILE.npz"),
    ("no data dir", "npz", None, [], 2, "--dataset npz needs --data-dir"),
    ("image size on mnist", "mnist", lambda d: d, ["--image-size", "16"], 2,
     "--image-size resizes your own images (--dataset npz or folder), not mnist"),
]


@pytest.mark.parametrize("dataset,make,extra,code,text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_own_images(dataset, make, extra, code, text, tmp_path, cli):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs) if make else None
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = tree(tmp_path)
    where = ["--data-dir", str(path)] if path else []
    rc, out, err = cli("run", "--budget", "100K", "--dataset", dataset, *where, *extra, cwd=cwd)
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    assert text.format(path=path) in lines[0], lines[0]
    if path and dataset != "mnist":
        assert str(path) in lines[0] or str(path.parent) in lines[0]  # names the file
    after = tree(tmp_path)
    if "--task" in extra:  # the images were fine and are cached for the next run; the search wrote nothing
        after = {k: v for k, v in after.items() if not k.startswith("cache")}
        before = {k: v for k, v in before.items() if not k.startswith("cache")}
    assert after == before  # no results, no database, no cache file


# --- the study's identity ----------------------------------------------------------------------------------

def _run(cli, cwd: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    return cli("run", "--budget", "40K", "--dataset", "npz", "--data-dir", str(data), "--family", "hourglass",
               "--trials", "1", "--epochs", "1", "--device", "cpu", "--study", "own", *extra, cwd=cwd)


def test_changed_file_and_image_size_are_refused_on_resume_and_old_studies_resume(tmp_path, cli):
    data = write_npz(tmp_path / "d.npz", side=8, n_train=36)
    rc, _, err = _run(cli, tmp_path, data)
    assert rc == 0, err
    other = _run(cli, tmp_path, data, "--image-size", "6")
    assert other[0] == 2 and "image_size (study: 0, now: 6)" in other[2], other[2]
    write_npz(data, side=8, n_train=36, x_train=images(36, 8, seed=5)[0])
    changed = _run(cli, tmp_path, data)
    assert changed[0] == 2 and "dataset_checksum (study: " in changed[2], changed[2]
    # A study made before image_size existed has no such key: it resumes as image size 0.
    write_npz(data, side=8, n_train=36)
    url = f"sqlite:///{tmp_path}/results/own/study.db"
    study = optuna.load_study(study_name="own.hourglass", storage=url)
    stored = dict(study.user_attrs[SETTINGS_KEY])
    del stored["image_size"]
    study.set_user_attr(SETTINGS_KEY, stored)
    rc, _, err = _run(cli, tmp_path, data, "--trials", "2")
    assert rc == 0, err
    resumed = optuna.load_study(study_name="own.hourglass", storage=url)
    assert len(resumed.trials) == 2 and "image_size" not in resumed.user_attrs[SETTINGS_KEY]


def test_frontier_finds_the_data_where_run_read_it_and_a_moved_file_is_passed_again(tmp_path, cli):
    """run stores the data's path with the study (not a setting): frontier computes the baseline without
    --data-dir; once the file has moved, the comparison is still made and --data-dir brings the baseline back."""
    data = write_npz(tmp_path / "d.npz", side=8, n_train=36)
    rc, _, err = _run(cli, tmp_path, data)
    assert rc == 0, err
    summary = tmp_path / "results" / "own" / "summary.json"
    rc, _, err = cli("frontier", "--study", "own", cwd=tmp_path)
    assert rc == 0, err
    first = json.loads(summary.read_text())
    assert first["baseline"] is not None and first["baseline_note"] is None, first["baseline_note"]
    moved = data.rename(tmp_path / "moved.npz")
    rc, _, err = cli("frontier", "--study", "own", cwd=tmp_path)
    assert rc == 0, err
    gone = json.loads(summary.read_text())
    assert gone["baseline"] is None and f"{data}, which is not on this machine: pass it with --data-dir" in \
        gone["baseline_note"], gone["baseline_note"]
    rc, _, err = cli("frontier", "--study", "own", "--data-dir", str(moved), cwd=tmp_path)
    assert rc == 0, err
    assert json.loads(summary.read_text())["baseline"] == first["baseline"]
    # The path is not part of the study's identity: resuming from the new place is no other study.
    rc, _, err = _run(cli, tmp_path, moved, "--trials", "2")
    assert rc == 0, err
