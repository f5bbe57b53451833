"""Trivial baselines per task (no learning): a model that does not beat its baseline learned nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgsearch.data.tasks import TaskData
from hgsearch.training.loop import as_float, evaluate

METHODS = {
    "superres": "bicubic upsampling of the (bicubic, no antialias) downsampled input",
    "denoise": "the noisy input itself",
    "classify": "nearest class mean (training split) -> that class's prototype",
}


@dataclass(frozen=True)
class Baseline:
    """PSNR (dB) of the task's trivial baseline, measured exactly like a model's (training.loop.evaluate)."""

    task: str
    method: str
    psnr_val: float
    psnr_test: float

    def to_dict(self) -> dict:
        return asdict(self)

    def learned_nothing(self, psnr_val: float) -> bool:
        """A model at or under the baseline's validation PSNR learned nothing (every flag uses this rule)."""
        return psnr_val <= self.psnr_val


class Bicubic(nn.Module):
    """Upsample the x2 input back to the target size with bicubic interpolation, clamped to [0, 1]."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        img = x.view(-1, c, h // 2, w // 2)
        up = F.interpolate(img, size=(h, w), mode="bicubic", align_corners=False)
        return up.clamp(0.0, 1.0).reshape(x.shape[0], -1)


class NearestMean(nn.Module):
    """Classify by the nearest training class mean, answer with that class's prototype image."""

    def __init__(self, means: torch.Tensor, protos: torch.Tensor) -> None:
        super().__init__()
        self.means, self.protos = means, protos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.protos[torch.cdist(x, self.means).argmin(dim=1)]


def _class_means(data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means of the training inputs, prototypes): classes are recovered from the targets.

    TaskData keeps no labels; every training target is its class's prototype, so identical target
    rows are one class. A random projection gives each row a scalar key without sorting 784-d rows.
    """
    x, y = as_float(data.train.inputs), as_float(data.train.targets)
    gen = torch.Generator(device=y.device).manual_seed(0)
    key = y.double() @ torch.rand(y.shape[1], generator=gen, device=y.device, dtype=torch.float64)
    _, first, inverse = _unique_first(key)
    counts = torch.bincount(inverse).to(x.dtype)
    sums = torch.zeros(len(first), x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, inverse, x)
    return sums / counts[:, None], y[first]


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(values),), len(key), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(key), device=key.device), reduce="amin")
    return values, first, inverse


def baseline_model(data: TaskData) -> nn.Module:
    """The task's trivial predictor as a module, so it is scored by the same evaluate() as a model."""
    if data.task == "superres":
        return Bicubic(data.image_shape)
    if data.task == "denoise":
        return nn.Identity()
    return NearestMean(*_class_means(data))


@torch.no_grad()
def baseline(data: TaskData) -> Baseline:
    """Validation and test PSNR of the task's trivial baseline."""
    model = baseline_model(data)
    return Baseline(data.task, METHODS[data.task], evaluate(model, data.val), evaluate(model, data.test))
