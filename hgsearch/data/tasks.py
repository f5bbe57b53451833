"""The three image-generation tasks: turn a uint8 dataset into (input, target) batches on a device.

Images stay uint8 on the training device (a quarter of float32's memory: ImageNet-32's 1.28M images
are 3.9 GB, not 15.7 GB) and become [0, 1] floats one batch at a time, which gives exactly the
values a float copy would hold. Everything is built once per process and kept on the device, so a
training step is a few tensor gathers, not a DataLoader round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgsearch.config import RunConfig
from hgsearch.data.registry import Dataset, load_dataset
from hgsearch.errors import DataError, UsageError
from hgsearch.names import AUGMENTS, TASKS

SPLIT_SEED = 0  # the validation split never depends on the run's seed, so runs stay comparable
EVAL_NOISE_SEED = 1234  # fixed noise on validation/test inputs: every model sees the same images
FLIPS = 4  # --augment flips: each image also appears flipped left-right, up-down and both
CHUNK_ROWS = 8192  # images converted at a time (downsampling, evaluation noise): bounded peak memory
VAL_SHARE = 6  # validation takes at most 1/6 of the training images: 10k of 60k on (Fashion-)MNIST, as in the paper


def as_float(t: torch.Tensor) -> torch.Tensor:
    """Rows stored as uint8 images become [0, 1] float32; float rows pass through unchanged."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


@dataclass(frozen=True)
class Split:
    """One split on the training device: row-aligned inputs and targets, and how a batch is made.

    inputs/targets hold float32 rows or uint8 image rows (converted per batch by as_float). With
    folds = 4 (flip augmentation) the split has 4N examples: example i is row i % N flipped by
    i // N (0 none, 1 left-right, 2 up-down, 3 both, the authors' order), done per batch so nothing
    is stored four times. A side is flipped only where its shape is given: class prototypes are not.
    """

    inputs: torch.Tensor  # (N, d_in); the same tensor as targets for training-time denoising
    targets: torch.Tensor  # (N, d_out)
    folds: int = 1
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) of an input row, for flipping
    target_shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return self.folds * self.inputs.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 (inputs, targets) of examples idx (int64 on the split's device)."""
        rows = idx % self.inputs.shape[0] if self.folds > 1 else idx
        x = as_float(self.inputs[rows])
        # as_float returns a fresh tensor for uint8 rows and the noise is added out of place, so
        # denoising may share one gathered batch as input and target.
        y = x if self.targets is self.inputs else as_float(self.targets[rows])
        if self.folds > 1:
            fold = idx // self.inputs.shape[0]
            flipped_x = flip(x, fold, self.input_shape) if self.input_shape else x
            y = flipped_x if y is x else (flip(y, fold, self.target_shape) if self.target_shape else y)
            x = flipped_x
        return x, y


def flip(flat: torch.Tensor, fold: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Flip row k of flat (B, C*H*W) left-right if fold[k] is 1 or 3, up-down if it is 2 or 3."""
    img = flat.view(-1, *shape)
    lr = ((fold == 1) | (fold == 3)).view(-1, 1, 1, 1)
    ud = (fold >= 2).view(-1, 1, 1, 1)
    img = torch.where(lr, img.flip(-1), img)
    return torch.where(ud, img.flip(-2), img).reshape(flat.shape)


@dataclass(frozen=True)
class TaskData:
    """Train/validation/test splits of one task on one dataset, ready for training.loop.train()."""

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


def rows(images: np.ndarray, index: np.ndarray | slice, device: torch.device) -> torch.Tensor:
    """images[index] (N, C, H, W) uint8 -> (n, C*H*W) uint8 on the device, one host copy at most."""
    picked = images[index]  # fancy indexing copies, so the cached read-only dataset is never aliased
    if isinstance(index, slice):
        picked = picked.copy()
    return torch.from_numpy(picked.reshape(len(picked), -1)).to(device)


def downsample(flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """x2 bicubic downsampling per channel, no antialiasing (as in the paper), flattened back (float32)."""
    c, h, w = shape
    out = []
    for chunk in flat.split(CHUNK_ROWS):
        img = as_float(chunk).view(-1, c, h, w)
        small = F.interpolate(img, size=(h // 2, w // 2), mode="bicubic", align_corners=False, antialias=False)
        out.append(small.reshape(small.shape[0], -1))
    return torch.cat(out)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2), clamped back to the valid image range [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0.0, 1.0)


def _noisy(flat: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Fixed evaluation noise, drawn in chunks (bounded memory) from one generator: same as one draw."""
    return torch.cat([add_noise(as_float(chunk), sigma, generator) for chunk in flat.split(CHUNK_ROWS)])


def prototypes(images: np.ndarray, labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Class prototype = the first training image of each class, indexed by label (uint8 rows)."""
    classes, first = np.unique(labels, return_index=True)
    if classes[0] < 0:
        raise DataError("labels must be non-negative class indices for the classify task")
    protos = torch.zeros(int(classes[-1]) + 1, int(np.prod(images.shape[1:])), dtype=torch.uint8, device=device)
    protos[torch.from_numpy(classes).to(device)] = rows(images, first, device)
    return protos


def prepare(
    dataset: Dataset,
    task: str,
    *,
    val_size: int = 10_000,
    noise_sigma: float = 0.25,
    augment: str = "none",
    train_size: int = 0,
    device: torch.device | str = "cpu",
) -> TaskData:
    """Build a task's three splits: validation carved from the training set by a seeded permutation.

    The validation split has val_size images, at most a sixth of the training set. train_size > 0
    trains on only that many of the remaining images (the first ones of the same seeded permutation,
    so the validation split does not change). augment="flips" makes the training split the paper's
    ImageNet-32 flip augmentation x4 (see Split).
    """
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if augment not in AUGMENTS:
        raise UsageError(f"unknown augmentation {augment!r}: use one of {', '.join(AUGMENTS)}")
    device = torch.device(device)
    c, h, w = dataset.shape
    if task == "superres" and (h % 2 or w % 2):
        raise UsageError(f"superres needs even image sides, {dataset.name} has {h}x{w}: use another task")
    if task == "classify" and not dataset.labelled:
        how = {"npz": "save y_train and y_test beside x_train and x_test",
               "folder": "put the images in class folders, train/<class>/ and test/<class>/"}.get(dataset.name, "")
        raise DataError(f"{dataset.source}: the classify task needs class labels and this data has none: "
                        f"{how or 'use denoise or superres'}")
    n_train = len(dataset.train.images)
    # Small datasets keep five sixths for training.
    val_size = min(val_size, n_train // VAL_SHARE)
    if val_size < 1:
        raise DataError(f"{dataset.name} has only {n_train} training images: at least {VAL_SHARE} are needed")

    if train_size < 0 or train_size > n_train - val_size:
        raise UsageError(f"--train-size must be between 1 and the {n_train - val_size:,} training images left "
                         f"after validation (or 0 for all of them), got {train_size:,}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_train)
    train_end = val_size + train_size if train_size else n_train
    x_tr = rows(dataset.train.images, perm[val_size:train_end], device)
    x_va = rows(dataset.train.images, perm[:val_size], device)
    x_te = rows(dataset.test.images, slice(None), device)
    folds = FLIPS if augment == "flips" else 1
    shape = (c, h, w)

    eval_gen = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED)
    if task == "denoise":
        # Training noise is drawn afresh per batch; evaluation noise is fixed so PSNRs compare.
        train = Split(x_tr, x_tr, folds, shape, shape)
        val = Split(_noisy(x_va, noise_sigma, eval_gen), x_va)
        test = Split(_noisy(x_te, noise_sigma, eval_gen), x_te)
        return TaskData(task, dataset.name, dataset.checksum, shape, train, val, test, noise_sigma)
    if task == "superres":
        # Stored, not recomputed per batch: float32 at a quarter of the pixels costs what the uint8
        # targets cost. Flipping a stored input equals downsampling the flipped image (to 1 ulp).
        train = Split(downsample(x_tr, shape), x_tr, folds, (c, h // 2, w // 2), shape)
        val = Split(downsample(x_va, shape), x_va)
        test = Split(downsample(x_te, shape), x_te)
        return TaskData(task, dataset.name, dataset.checksum, shape, train, val, test, 0.0)
    protos = prototypes(dataset.train.images, dataset.train.labels, device)
    if int(dataset.test.labels.max()) >= len(protos):
        raise DataError(f"{dataset.name}: a test label has no training image to serve as its prototype")
    lab_tr = torch.tensor(dataset.train.labels, device=device)
    lab_te = torch.tensor(dataset.test.labels, device=device)
    perm_t = torch.from_numpy(perm).to(device)
    # Inputs are flipped, targets are not: a flipped image still belongs to its class.
    train = Split(x_tr, protos[lab_tr[perm_t[val_size:train_end]]], folds, shape, None)
    val = Split(x_va, protos[lab_tr[perm_t[:val_size]]])
    test = Split(x_te, protos[lab_te])
    return TaskData(task, dataset.name, dataset.checksum, shape, train, val, test, 0.0)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is a usage error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA device: use --device cpu")
    return torch.device(name)


def load_task(cfg: RunConfig) -> TaskData:
    """Read the run's dataset and build its task's splits on the run's device (once per process)."""
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    return prepare(dataset, cfg.task, val_size=cfg.val_size, noise_sigma=cfg.noise_sigma, augment=cfg.augment,
                   train_size=cfg.train_size, device=device)
