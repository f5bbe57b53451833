"""The three tasks: shapes, value ranges, splits and the paper's definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hgsearch.data import Dataset, ImageSet
from hgsearch.errors import UsageError
from hgsearch.tasks import add_noise, prepare
from tests.conftest import smooth_images


def dataset(n_train=120, n_test=30, side=28, channels=1):
    imgs, labels = smooth_images(n_train + n_test, side, 0)
    imgs = np.repeat(imgs[:, None], channels, axis=1)
    labels = labels.astype(np.int64)
    return Dataset("synthetic", ImageSet(imgs[:n_train], labels[:n_train]),
                   ImageSet(imgs[n_train:], labels[n_train:]), "0" * 64, "memory")


@pytest.mark.parametrize("task,d_in", [("denoise", 784), ("superres", 196), ("classify", 784)])
def test_shapes_and_ranges(task, d_in):
    data = prepare(dataset(), task, val_size=20)
    assert (data.d_in, data.d_out) == (d_in, 784)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 30)
    for split in (data.train, data.val, data.test):
        assert split.inputs.dtype == split.targets.dtype == torch.float32
        assert split.targets.min() >= 0 and split.targets.max() <= 1
        if task != "superres":  # bicubic may overshoot slightly; the other inputs are images
            assert split.inputs.min() >= 0 and split.inputs.max() <= 1


def test_validation_split_is_fixed_and_disjoint():
    ds = dataset()
    a, b = prepare(ds, "superres", val_size=20), prepare(ds, "superres", val_size=20)
    assert torch.equal(a.val.targets, b.val.targets)
    train_rows = {tuple(r.tolist()) for r in a.train.targets}
    assert not any(tuple(r.tolist()) in train_rows for r in a.val.targets)
    assert len(a.val) == 20 and len(prepare(ds, "superres", val_size=10_000).val) == 120 // 6


def test_denoise_noise_fixed_for_eval_fresh_for_training():
    ds = dataset()
    d1, d2 = prepare(ds, "denoise", val_size=20), prepare(ds, "denoise", val_size=20)
    assert torch.equal(d1.val.inputs, d2.val.inputs)  # every model is scored on the same noisy images
    assert d1.train_noise == 0.25 and torch.equal(d1.train.inputs, d1.train.targets)
    assert not torch.equal(d1.test.inputs, d1.test.targets)
    x = torch.full((1000, 10), 0.5)
    n1, n2 = add_noise(x, 0.25), add_noise(x, 0.25)
    assert not torch.equal(n1, n2) and n1.min() == 0 and n1.max() == 1  # clamped to the image range
    assert abs((add_noise(x, 0.05) - x).std().item() - 0.05) < 0.002  # sigma is the noise std


def test_superres_is_bicubic_without_antialias():
    ds = dataset(side=8)
    data = prepare(ds, "superres", val_size=20)
    img = torch.from_numpy(ds.test.images[:3]).float() / 255
    expected = F.interpolate(img, size=(4, 4), mode="bicubic", align_corners=False, antialias=False)
    assert torch.allclose(data.test.inputs[:3], expected.reshape(3, -1))
    assert data.d_in == 16 and data.d_out == 64


def test_colour_images_downsample_per_channel():
    data = prepare(dataset(side=8, channels=3), "superres", val_size=20)
    assert (data.d_in, data.d_out) == (3 * 16, 3 * 64)


def test_classify_targets_are_first_training_image_of_each_class():
    ds = dataset()
    data = prepare(ds, "classify", val_size=20)
    protos = {}
    for img, lab in zip(ds.train.images, ds.train.labels):
        protos.setdefault(int(lab), torch.from_numpy(img.reshape(-1)).float() / 255)
    for target, lab in zip(data.test.targets, ds.test.labels):
        assert torch.equal(target, protos[int(lab)])


def test_bad_task_and_odd_sides():
    with pytest.raises(UsageError, match="unknown task"):
        prepare(dataset(), "segment")
    with pytest.raises(UsageError, match="even"):
        prepare(dataset(side=7), "superres")
