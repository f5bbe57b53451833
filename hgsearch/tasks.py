"""The three image-generation tasks: turn a uint8 dataset into (input, target) tensors on a device.

All images are flattened to [0, 1] floats. Everything is built once per process and kept on the
training device, so a training step is two tensor gathers, not a DataLoader round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgsearch.data import Dataset
from hgsearch.errors import DataError, UsageError

TASKS = ("denoise", "superres", "classify")
SPLIT_SEED = 0  # the validation split never depends on the run's seed, so runs stay comparable
EVAL_NOISE_SEED = 1234  # fixed noise on validation/test inputs: every model sees the same images


@dataclass(frozen=True)
class Split:
    """One split: model inputs and targets, row-aligned, float32 on the training device."""

    inputs: torch.Tensor  # (N, d_in)
    targets: torch.Tensor  # (N, d_out); the same tensor as inputs for training-time denoising

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass(frozen=True)
class TaskData:
    """Train/validation/test splits of one task on one dataset, ready for train.train()."""

    task: str
    dataset: str
    checksum: str
    image_shape: tuple[int, int, int]  # (C, H, W) of the targets
    train: Split
    val: Split
    test: Split
    train_noise: float  # sigma of fresh Gaussian noise added to each training batch (denoising)

    @property
    def d_in(self) -> int:
        return self.train.inputs.shape[1]

    @property
    def d_out(self) -> int:
        return self.train.targets.shape[1]


def to_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C*H*W) in [0, 1] on the device."""
    # np.require copies only read-only or strided arrays (memory-mapped files), which torch can't wrap.
    x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(device)
    return x.reshape(x.shape[0], -1).float().div_(255.0)


def downsample(flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """x2 bicubic downsampling per channel, no antialiasing (as in the paper), flattened back."""
    c, h, w = shape
    out = []
    for chunk in flat.split(8192):  # bounded peak memory on large datasets
        img = chunk.view(-1, c, h, w)
        small = F.interpolate(img, size=(h // 2, w // 2), mode="bicubic", align_corners=False, antialias=False)
        out.append(small.reshape(small.shape[0], -1))
    return torch.cat(out)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2), clamped back to the valid image range [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0.0, 1.0)


def prototypes(images: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Class prototype = the first training image of each class, indexed by label."""
    classes = np.unique(labels)
    if classes[0] < 0:
        raise DataError("labels must be non-negative class indices for the classify task")
    protos = torch.zeros(int(classes[-1]) + 1, images.shape[1], device=images.device)
    for c in classes:
        protos[int(c)] = images[int(np.argmax(labels == c))]
    return protos


def prepare(
    dataset: Dataset,
    task: str,
    *,
    val_size: int = 10_000,
    noise_sigma: float = 0.25,
    device: torch.device | str = "cpu",
) -> TaskData:
    """Build a task's three splits: validation carved from the training set by a seeded permutation.

    The validation split has val_size images, at most a sixth of the training set.
    """
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    device = torch.device(device)
    c, h, w = dataset.shape
    if task == "superres" and (h % 2 or w % 2):
        raise UsageError(f"superres needs even image sides, {dataset.name} has {h}x{w}: use another task")
    n_train = len(dataset.train.images)
    # 10k of 60k on (Fashion-)MNIST as in the paper; small datasets keep five sixths for training.
    val_size = min(val_size, n_train // 6)
    if val_size < 1:
        raise DataError(f"{dataset.name} has only {n_train} training images: at least 6 are needed")

    train_all = to_float(dataset.train.images, device)
    test_x = to_float(dataset.test.images, device)
    perm = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(n_train)).to(device)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    train_labels = dataset.train.labels

    eval_gen = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED)
    if task == "denoise":
        x_tr = train_all[train_idx]
        x_va = train_all[val_idx]
        # Training noise is drawn afresh per batch; evaluation noise is fixed so PSNRs compare.
        train = Split(x_tr, x_tr)
        val = Split(add_noise(x_va, noise_sigma, eval_gen), x_va)
        test = Split(add_noise(test_x, noise_sigma, eval_gen), test_x)
        return TaskData(task, dataset.name, dataset.checksum, (c, h, w), train, val, test, noise_sigma)
    if task == "superres":
        small_all = downsample(train_all, (c, h, w))
        train = Split(small_all[train_idx], train_all[train_idx])
        val = Split(small_all[val_idx], train_all[val_idx])
        test = Split(downsample(test_x, (c, h, w)), test_x)
        return TaskData(task, dataset.name, dataset.checksum, (c, h, w), train, val, test, 0.0)
    protos = prototypes(train_all, train_labels)
    if int(dataset.test.labels.max()) >= len(protos):
        raise DataError(f"{dataset.name}: a test label has no training image to serve as its prototype")
    lab_tr = torch.from_numpy(train_labels.astype(np.int64)).to(device)
    lab_te = torch.from_numpy(dataset.test.labels.astype(np.int64)).to(device)
    train = Split(train_all[train_idx], protos[lab_tr[train_idx]])
    val = Split(train_all[val_idx], protos[lab_tr[val_idx]])
    test = Split(test_x, protos[lab_te])
    return TaskData(task, dataset.name, dataset.checksum, (c, h, w), train, val, test, 0.0)
