"""One plain training function: AdamW, linear decay to zero, MSE on the sigmoid output, PSNR eval."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hgsearch.data.tasks import Split, TaskData, add_noise, as_float  # as_float: re-exported for callers
from hgsearch.errors import TrialFailed, UsageError
from hgsearch.model.families import ArchSpec, build

# Called at each epoch end with everything needed to continue exactly from there (see `train`); returns
# whether to train on: False stops training there, True goes on, and so does None (a callback that
# only records). The one epoch-end contract: packed.PackRun's on_epoch_end answers the same per member.
EpochEnd = Callable[[dict[str, Any]], bool | None]

# Called as progress(epoch, step, steps_per_epoch, loss) at each epoch end (loss = epoch mean) and
# every `report_every` steps (loss = last batch); the live display and checkpointing hang off it.
Progress = Callable[[int, int, int, float], None]

# Called before every step; whatever it raises ends training there (search: stop.check_stop raising
# Stopped after Ctrl-C). Every step, not every report, so a stop waits for at most one step.
StopCheck = Callable[[], None]


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced; search stores all of it as trial attributes."""

    psnr_val: float  # validation PSNR in dB: the only quality number used for selection
    psnr_test: float  # test PSNR in dB: reported, never used to select anything
    train_loss: float  # mean training MSE of the last epoch
    seconds: float  # wall time of training plus evaluation
    epochs: int
    steps: int


# Evaluation forwards this many 128-image batches at once: big matmuls run near the machine's peak,
# and PSNR is still computed per batch of batch_size rows (BatchNorm in eval mode is per-row).
# Evaluation always runs in float32 on every device: the stored PSNRs never depend on the fast path.
EVAL_BATCHES = 16

# bf16 autocast for train()'s step on CUDA is opt-in (HGSEARCH_CUDA_BF16=1): one small model at batch
# 128 is launch-bound, and autocast's casts only add launches. Measured on an H200 (bench/gpu_packs.py,
# 5.8M Hourglass, 2026-11-27): 16.5k samples/s in float32, 12.8k with bf16. Packed training with CUDA
# graphs is where bf16 pays (packed.py). On CPU bf16 is ~30x slower and never used.
CUDA_BF16 = os.environ.get("HGSEARCH_CUDA_BF16", "0") == "1"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and CUDA_BF16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    """The paper's AdamW; the fused kernel (one pass over all weights, same update) on CPU and CUDA."""
    # Measured on 2 CPU cores for a 5.8M model: fused ~1.4x the foreach kernel's step rate (bench/).
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay,
                             fused=True if fused else None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 128) -> float:
    """PSNR in dB (data range 1) the paper's way: per batch of 128 on the pooled MSE, size-weighted."""
    was_training = model.training
    model.eval()
    rows = batch_size * EVAL_BATCHES  # a multiple of batch_size: chunks never straddle a batch
    total = torch.zeros((), dtype=torch.float64, device=split.inputs.device)
    for x, y in zip(split.inputs.split(rows), split.targets.split(rows), strict=True):
        row_mse = (model(as_float(x)) - as_float(y)).pow_(2).mean(1)  # equal-size rows: batch MSE = mean row MSE
        full = row_mse.shape[0] // batch_size * batch_size  # rows in full batches of this chunk
        if full:
            total += batch_size * _db(row_mse[:full].view(-1, batch_size).mean(1)).sum()
        if full < row_mse.shape[0]:  # only the split's last chunk can end in a partial batch
            total += (row_mse.shape[0] - full) * _db(row_mse[full:].mean())
    model.train(was_training)
    return total.item() / len(split.inputs)  # one device sync per split, not one per batch


def epoch_eval_split(split: Split, n: int) -> Split:
    """The first n rows of a split (all of it when n is 0 or larger): a fixed per-epoch evaluation set.

    The validation split is already a seeded random draw, so its first n rows are a fixed random
    subset that every trial of every study shares.
    """
    if n <= 0 or n >= split.inputs.shape[0]:
        return split
    return Split(split.inputs[:n], split.targets[:n])


def _db(mse: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / mse) in float64, with the MSE floored at 1e-20 (a perfect batch stays finite)."""
    return -10.0 * torch.log10(mse.double().clamp_min(1e-20))


def train(
    spec: ArchSpec,
    data: TaskData,
    *,
    lr: float,
    epochs: int,
    batch_size: int = 128,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    report_every: int = 50,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochEnd | None = None,
    epoch_eval: Split | None = None,
    stop_check: StopCheck | None = None,
) -> tuple[torch.nn.Module, TrainResult | None]:
    """Train one configuration and evaluate it; raises TrialFailed on a non-finite loss or OOM.

    on_epoch_end(state) receives, after each finished epoch, a dict of tensors and numbers
    (model, optimizer and RNG state, epoch, step, loss) that `resume=state` continues from, giving the
    same result as an uninterrupted run: it is what per-epoch checkpoints save. Its tensors are the
    live ones (no copy on the hot path), so write or copy them before returning. When it returns
    False, training ends there, nothing is evaluated, and the result is None (the model as trained
    so far); without on_epoch_end the result is always a TrainResult.

    epoch_eval (e.g. `epoch_eval_split(data.val, n)`) adds "psnr_val_epoch", the PSNR on that split
    after the epoch, to the state: the learning curve early stopping decides on. The returned
    psnr_val/psnr_test are always on the full splits.
    """
    if (spec.d_in, spec.d_out) != (data.d_in, data.d_out):
        raise UsageError(f"model is {spec.d_in}->{spec.d_out} but the task is {data.d_in}->{data.d_out}")
    device = torch.device(device) if device is not None else data.train.inputs.device
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # same seed, same initial weights: a frontier row can be retrained
    gen = torch.Generator(device=device).manual_seed(seed)
    try:
        model = build(spec).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, lr, weight_decay, device)
        n = len(data.train)  # examples per epoch: 4x the images under flip augmentation
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = epochs * steps_per_epoch
        # Linear decay to zero, no warmup (the paper's schedule): one precomputed value per step.
        lrs = [lr * (1.0 - s / total_steps) for s in range(total_steps)]
        step, start_epoch, loss_mean = 0, 0, float("nan")
        if resume is not None:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            gen.set_state(resume["generator"])
            start_epoch, step, loss_mean = int(resume["epoch"]), int(resume["step"]), float(resume["loss"])
            t0 -= float(resume["seconds"])  # wall time counts the interrupted run's finished epochs
        # A single group (every trainable weight shares lr and decay), taken after load_state_dict,
        # which replaces the group dicts.
        group = opt.param_groups[0]
        for epoch in range(start_epoch, epochs):
            perm = torch.randperm(n, generator=gen, device=device)
            loss_sum = torch.zeros((), device=device)
            for i, idx in enumerate(perm.split(batch_size)):
                if stop_check is not None:
                    stop_check()
                group["lr"] = lrs[step]
                x, y = data.train.batch(idx)  # float32; uint8 images converted per batch
                if data.train_noise:
                    x = add_noise(x, data.train_noise, gen)
                with _autocast(device):
                    out = model(x)
                loss = F.mse_loss(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # Accumulate on the device: reading .item() every step would sync a GPU.
                loss_sum += loss.detach() * idx.shape[0]
                step += 1
                if progress is not None and (i + 1) % report_every == 0:
                    progress(epoch, i + 1, steps_per_epoch, loss.item())
            loss_mean = loss_sum.item() / n
            # A NaN/inf loss poisons the weights for good, so one check per epoch is enough.
            if not math.isfinite(loss_mean):
                raise TrialFailed(f"non-finite training loss in epoch {epoch + 1} at lr={lr:.3g}")
            if progress is not None:
                progress(epoch, steps_per_epoch, steps_per_epoch, loss_mean)
            if on_epoch_end is not None:
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "generator": gen.get_state(), "epoch": epoch + 1, "step": step,
                         "loss": loss_mean, "seconds": time.perf_counter() - t0}
                if epoch_eval is not None:
                    state["psnr_val_epoch"] = evaluate(model, epoch_eval, batch_size)
                if on_epoch_end(state) is False:
                    return model, None
        psnr_val = evaluate(model, data.val, batch_size)
        psnr_test = evaluate(model, data.test, batch_size)
    except torch.OutOfMemoryError:
        raise TrialFailed(f"out of memory on {device} for {spec.params:,} parameters") from None
    if not (math.isfinite(psnr_val) and math.isfinite(psnr_test)):
        raise TrialFailed(f"non-finite evaluation PSNR (val {psnr_val}, test {psnr_test})")
    seconds = time.perf_counter() - t0
    return model, TrainResult(psnr_val, psnr_test, loss_mean, seconds, epochs, step)
