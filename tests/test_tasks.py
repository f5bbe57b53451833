"""The three tasks: shapes, value ranges, splits and the paper's definitions."""

import pytest
import torch
import torch.nn.functional as F

from hgsearch.data.tasks import add_noise, as_float, prepare
from hgsearch.errors import UsageError
from hgsearch.model.space import smallest
from tests.conftest import dataset


@pytest.mark.parametrize("task,d_in", [("denoise", 784), ("superres", 196), ("classify", 784)])
def test_shapes_and_ranges(task, d_in):
    data = prepare(dataset(), task, val_size=20)
    assert (data.d_in, data.d_out) == (d_in, 784)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 30)
    # Images stay uint8 on the device; the derived inputs (bicubic, noisy) are float32.
    assert data.train.targets.dtype == torch.uint8
    assert data.train.inputs.dtype == (torch.float32 if task == "superres" else torch.uint8)
    assert data.val.inputs.dtype == (torch.uint8 if task == "classify" else torch.float32)
    for split in (data.train, data.val, data.test):
        x, y = split.batch(torch.arange(len(split)))
        assert x.dtype == y.dtype == torch.float32 and x.shape == (len(split), d_in)
        assert y.min() >= 0 and y.max() <= 1 and y.max() > 0.5
        if task != "superres":  # bicubic may overshoot slightly; the other inputs are images
            assert x.min() >= 0 and x.max() <= 1


def test_validation_split_is_fixed_and_disjoint():
    ds = dataset()
    a, b = prepare(ds, "superres", val_size=20), prepare(ds, "superres", val_size=20)
    assert torch.equal(a.val.targets, b.val.targets) and torch.equal(a.train.inputs, b.train.inputs)
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


def test_colour_images_flatten_to_channels_and_downsample_per_channel():
    ds = dataset(side=8, channels=3)
    data = prepare(ds, "superres", val_size=20)
    assert (data.d_in, data.d_out) == (3 * 16, 3 * 64)
    img = torch.from_numpy(ds.test.images).float() / 255
    assert torch.equal(as_float(data.test.targets), img.reshape(len(img), -1))  # channel-major rows
    for ch in range(3):  # each channel downsampled on its own, in its own slot
        one = F.interpolate(img[:, ch:ch + 1], size=(4, 4), mode="bicubic", align_corners=False, antialias=False)
        assert torch.allclose(data.test.inputs[:, ch * 16:(ch + 1) * 16], one.reshape(len(img), -1), atol=1e-6)


def test_conventional_width_follows_the_image_size():
    """The conventional stream is d_x = the (colour) image size; Hourglass streams are wider."""
    data = prepare(dataset(side=32, channels=3), "superres", val_size=20)
    assert (data.d_in, data.d_out) == (768, 3072)
    assert smallest("conventional", data.d_in, data.d_out).width == 3072
    assert smallest("hourglass", data.d_in, data.d_out).width == 3073


def test_uint8_rows_give_exactly_the_float_values():
    ds = dataset()
    for task in ("denoise", "superres", "classify"):
        data = prepare(ds, task, val_size=20)
        idx = torch.tensor([5, 0, 99, 5])
        x, y = data.train.batch(idx)
        assert torch.equal(x, as_float(data.train.inputs)[idx]) and torch.equal(y, as_float(data.train.targets)[idx])
    x = torch.from_numpy(ds.train.images[:3].reshape(3, -1))
    assert torch.equal(as_float(x), x.float() / 255)


@pytest.mark.parametrize("task", ["denoise", "superres", "classify"])
def test_flip_augmentation_is_the_four_flips_per_batch(task):
    ds = dataset(side=8, channels=3)
    plain, aug = prepare(ds, task, val_size=20), prepare(ds, task, val_size=20, augment="flips")
    n = len(plain.train)
    assert len(aug.train) == 4 * n and (len(aug.val), len(aug.test)) == (len(plain.val), len(plain.test))
    assert aug.train.inputs.shape == plain.train.inputs.shape  # the flips are made per batch, not stored
    r = 7
    x, y = aug.train.batch(torch.tensor([r, n + r, 2 * n + r, 3 * n + r]))
    img = as_float(plain.train.targets[r]).view(3, 8, 8)
    flips = [img, img.flip(-1), img.flip(-2), img.flip(-1).flip(-2)]  # none, left-right, up-down, both
    for k, flipped in enumerate(flips):
        if task == "classify":  # the input is flipped; the class prototype is not
            assert torch.equal(x[k], as_float(plain.train.inputs[r]).view(3, 8, 8).flip(
                [d for d, on in ((-1, k in (1, 3)), (-2, k >= 2)) if on]).reshape(-1))
            assert torch.equal(y[k], as_float(plain.train.targets[r]))
            continue
        assert torch.equal(y[k], flipped.reshape(-1))
        if task == "denoise":
            assert torch.equal(x[k], y[k])  # training noise is added by train() afterwards
        else:  # the input is the downsampled flipped image (bicubic commutes with flips to rounding)
            small = F.interpolate(flipped[None], size=(4, 4), mode="bicubic", align_corners=False, antialias=False)
            assert torch.allclose(x[k], small.reshape(-1), atol=1e-6)
    with pytest.raises(UsageError, match="augmentation"):
        prepare(ds, task, augment="rotate")


def test_classify_targets_are_first_training_image_of_each_class():
    ds = dataset()
    data = prepare(ds, "classify", val_size=20)
    protos = {}
    for img, lab in zip(ds.train.images, ds.train.labels, strict=True):
        protos.setdefault(int(lab), torch.from_numpy(img.reshape(-1).copy()))
    for target, lab in zip(data.test.targets, ds.test.labels, strict=True):
        assert torch.equal(target, protos[int(lab)])
    assert len(protos) > 3


def test_bad_task_and_odd_sides():
    with pytest.raises(UsageError, match="unknown task"):
        prepare(dataset(), "segment")
    with pytest.raises(UsageError, match="even"):
        prepare(dataset(side=7), "superres")


def test_train_size_keeps_validation_and_takes_the_first_training_images():
    ds = dataset()
    full, part = prepare(ds, "superres", val_size=20), prepare(ds, "superres", val_size=20, train_size=30)
    assert (len(full.train), len(part.train)) == (100, 30)
    assert torch.equal(part.val.targets, full.val.targets) and torch.equal(part.test.inputs, full.test.inputs)
    assert torch.equal(part.train.targets, full.train.targets[:30])
    cls = prepare(ds, "classify", val_size=20, train_size=30)
    assert torch.equal(cls.train.targets, prepare(ds, "classify", val_size=20).train.targets[:30])
    with pytest.raises(UsageError, match="between 1 and the 100 training images"):
        prepare(ds, "superres", val_size=20, train_size=101)
