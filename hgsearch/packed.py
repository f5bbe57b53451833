"""Packed training: K configurations of one width trained as one batched computation (one GPU, many trials).

Every model sees the same batches (one seed, one data order), so a step is one gather and, per layer,
one batched matmul over the K models instead of K small launches: what fills a GPU with small MLPs.
Results equal K separate `train.train()` runs within float rounding (tests check it on the CPU):

- Same initial weights: model k is built exactly as train() builds it (torch.manual_seed(seed), then
  models.build) and copied into the packed tensors.
- Depths may differ: the pack has max(depth) blocks and block l of model k is multiplied by a 0/1
  mask. A masked block is the identity exactly (z + 0 * branch), its gradients are exactly zero, so
  AdamW's moments stay zero and its update is zero; weight decay only shrinks weights whose output is
  multiplied by 0. Widths cannot be padded exactly (a wider BatchNorm or matmul changes the
  numbers), so all models share width and bottleneck.
- Learning rates may differ: AdamW is written out below with a per-model learning rate, the same
  update as torch.optim.AdamW (decoupled decay, bias correction), linear decay to zero per model.
- BatchNorm (affine=False) normalises each model over the batch separately; running statistics are
  kept per model and used in evaluation, as nn.BatchNorm1d does.
- The loss is the sum of the K per-model MSEs: model k's gradient is exactly its own MSE's gradient.

No resume hook here: a pack is a unit of work to retry whole; search trials use train.train().
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from hgsearch.errors import TrialFailed, UsageError
from hgsearch.models import ArchSpec, ResidualMLP, build
from hgsearch.tasks import Split, TaskData, add_noise, as_float
from hgsearch.train import EVAL_BATCHES, TrainResult, _autocast, _db

BN_EPS = 1e-5  # nn.BatchNorm1d's defaults
BN_MOMENTUM = 0.1
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def check_packable(specs: Sequence[ArchSpec]) -> None:
    """Packable specs differ at most in depth: anything else would change the models' numbers."""
    if not specs:
        raise UsageError("a pack needs at least one configuration")
    keys = {(s.family, s.d_in, s.d_out, s.width, s.bottleneck, s.fixed_win) for s in specs}
    if len(keys) > 1:
        raise UsageError("packed configurations must share family, d_in, d_out, width, bottleneck and "
                         f"fixed_win (only depth and lr may differ); got {len(keys)} different shapes")


class PackedMLP(nn.Module):
    """K residual MLPs of one width as stacked weights: (K, out, in) per layer, depth padded by masks."""

    def __init__(self, specs: Sequence[ArchSpec], seed: int) -> None:
        super().__init__()
        check_packable(specs)
        self.specs = list(specs)
        k, depth = len(specs), max(s.depth for s in specs)
        s0 = specs[0]
        models = []
        for spec in specs:
            torch.manual_seed(seed)  # what train() does before build(): the same initial weights
            models.append(build(spec))
        self.w_in = nn.Parameter(torch.stack([m.w_in.weight.detach() for m in models]),
                                 requires_grad=not s0.fixed_win)
        self.w_out = nn.Parameter(torch.stack([m.w_out.weight.detach() for m in models]))
        zeros_down, zeros_up = torch.zeros(s0.bottleneck, s0.width), torch.zeros(s0.width, s0.bottleneck)
        self.down = nn.ParameterList(
            nn.Parameter(torch.stack([m.blocks[l].down.weight.detach() if l < len(m.blocks) else zeros_down
                                      for m in models])) for l in range(depth))
        self.up = nn.ParameterList(
            nn.Parameter(torch.stack([m.blocks[l].up.weight.detach() if l < len(m.blocks) else zeros_up
                                      for m in models])) for l in range(depth))
        self.register_buffer("mask", torch.tensor([[1.0 if l < s.depth else 0.0 for l in range(depth)]
                                                   for s in specs]).T.reshape(depth, k, 1, 1).contiguous())
        self.register_buffer("running_mean", torch.zeros(depth, k, 1, s0.width))
        self.register_buffer("running_var", torch.ones(depth, k, 1, s0.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, d_in), shared by all models -> (K, B, d_out)."""
        z = torch.matmul(x, self.w_in.transpose(1, 2))  # (K, B, width)
        n = z.shape[1]
        for l in range(len(self.down)):
            if self.training:
                mean = z.mean(1, keepdim=True)
                var = z.var(1, unbiased=False, keepdim=True)
                with torch.no_grad():  # nn.BatchNorm1d keeps the unbiased variance
                    self.running_mean[l].lerp_(mean.float(), BN_MOMENTUM)
                    self.running_var[l].lerp_(var.float() * (n / max(n - 1, 1)), BN_MOMENTUM)
            else:
                mean, var = self.running_mean[l], self.running_var[l]
            zn = (z - mean) * torch.rsqrt(var + BN_EPS)
            branch = torch.bmm(torch.relu(torch.bmm(zn, self.down[l].transpose(1, 2))), self.up[l].transpose(1, 2))
            z = z + self.mask[l] * branch
        return torch.sigmoid(torch.bmm(z, self.w_out.transpose(1, 2)))

    def unpack(self, k: int) -> ResidualMLP:
        """Model k as the plain module train() would have returned (weights and running statistics)."""
        spec = self.specs[k]
        model = build(spec).to(self.w_out.device)
        with torch.no_grad():
            model.w_in.weight.copy_(self.w_in[k])
            model.w_out.weight.copy_(self.w_out[k])
            for l, block in enumerate(model.blocks):
                block.down.weight.copy_(self.down[l][k])
                block.up.weight.copy_(self.up[l][k])
                block.norm.running_mean.copy_(self.running_mean[l, k, 0])
                block.norm.running_var.copy_(self.running_var[l, k, 0])
        return model


class PackedAdamW:
    """torch.optim.AdamW's update (amsgrad off) for stacked (K, ...) weights, one learning rate per model."""

    def __init__(self, params: Sequence[nn.Parameter], weight_decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.wd = weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """lr: (K,) learning rates of this step."""
        self.t += 1
        b1, b2 = BETAS
        bc1, bc2_sqrt = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            lr_k = lr.view(-1, *([1] * (p.dim() - 1)))
            p.mul_(1 - lr_k * self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(lr_k / bc1 * m / (v.sqrt() / bc2_sqrt + ADAM_EPS))
            p.grad = None


@torch.no_grad()
def evaluate_packed(model: PackedMLP, split: Split, batch_size: int = 128) -> list[float]:
    """Each model's PSNR exactly as train.evaluate defines it (per batch of 128, size-weighted)."""
    model.eval()
    rows = batch_size * EVAL_BATCHES
    total = torch.zeros(len(model.specs), dtype=torch.float64, device=split.inputs.device)
    for x, y in zip(split.inputs.split(rows), split.targets.split(rows)):
        row_mse = (model(as_float(x)) - as_float(y)).pow_(2).mean(2)  # (K, rows)
        full = row_mse.shape[1] // batch_size * batch_size
        if full:
            total += batch_size * _db(row_mse[:, :full].reshape(len(model.specs), -1, batch_size).mean(2)).sum(1)
        if full < row_mse.shape[1]:
            total += (row_mse.shape[1] - full) * _db(row_mse[:, full:].mean(1))
    model.train()
    return (total / len(split.inputs)).tolist()


def train_packed(
    specs: Sequence[ArchSpec],
    data: TaskData,
    *,
    lrs: Sequence[float],
    epochs: int,
    batch_size: int = 128,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[PackedMLP, list[TrainResult | TrialFailed]]:
    """Train specs[k] at lrs[k] together; result k equals train(specs[k], lr=lrs[k], ...) within rounding.

    A model whose loss turns non-finite gets a TrialFailed in its slot and does not disturb the others
    (the models share no weights and no statistics); `seconds` is the pack's wall time for each.
    """
    if len(lrs) != len(specs):
        raise UsageError(f"{len(specs)} configurations but {len(lrs)} learning rates")
    check_packable(specs)
    if (specs[0].d_in, specs[0].d_out) != (data.d_in, data.d_out):
        raise UsageError(f"model is {specs[0].d_in}->{specs[0].d_out} but the task is {data.d_in}->{data.d_out}")
    device = torch.device(device) if device is not None else data.train.inputs.device
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)  # the data order (and noise) of train()
    k = len(specs)
    try:
        model = PackedMLP(specs, seed).to(device)
        opt = PackedAdamW(list(model.parameters()), weight_decay)
        n = len(data.train)
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = epochs * steps_per_epoch
        base = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        losses = torch.zeros(k, device=device)
        step = 0
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen, device=device)
            losses.zero_()
            for idx in perm.split(batch_size):
                x, y = data.train.batch(idx)
                if data.train_noise:
                    x = add_noise(x, data.train_noise, gen)
                with _autocast(device):
                    out = model(x)
                per_model = (out.float() - y).pow(2).mean((1, 2))  # (K,): each model's MSE
                per_model.sum().backward()
                opt.step(base * (1.0 - step / total_steps))
                losses += per_model.detach() * idx.shape[0]
                step += 1
        loss_means = (losses / n).tolist()
        psnr_val = evaluate_packed(model, data.val, batch_size)
        psnr_test = evaluate_packed(model, data.test, batch_size)
    except torch.OutOfMemoryError:
        raise TrialFailed(f"out of memory on {device} for a pack of {k} models") from None
    seconds = time.perf_counter() - t0
    results: list[TrainResult | TrialFailed] = []
    for i in range(k):
        if not all(math.isfinite(v) for v in (loss_means[i], psnr_val[i], psnr_test[i])):
            results.append(TrialFailed(f"non-finite training loss or PSNR at lr={lrs[i]:.3g}"))
        else:
            results.append(TrainResult(psnr_val[i], psnr_test[i], loss_means[i], seconds, epochs, step))
    return model, results
