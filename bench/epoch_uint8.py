"""Data path vs arithmetic on ImageNet-32 shapes: uint8 rows converted per batch, float rows, flips.

Run: .venv/bin/python bench/epoch_uint8.py [N_IMAGES]
Prints per-batch milliseconds (median of interleaved repeats, so load from other processes hits every
variant alike) of: the data path alone (gather + convert (+ flips)), and one training step of the
smallest ImageNet-32 models (the arithmetic). The data path must be a small fraction of a step.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hgsearch.data.tasks import FLIPS, Split
from hgsearch.model.families import ArchSpec, build
from hgsearch.model.space import smallest

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
B, REPEATS, STEPS = 128, 7, 20
torch.manual_seed(0)
images = torch.randint(0, 256, (N, 3072), dtype=torch.uint8)
shape = (3, 32, 32)
variants = {
    "float32 rows (old)": Split(images.float().div_(255), images.float().div_(255)),
    "uint8 rows": Split(images, images),
    "uint8 rows + flips x4": Split(images, images, FLIPS, shape, shape),
}
gen = torch.Generator().manual_seed(0)


def data_ms(split: Split) -> float:
    perm = torch.randperm(len(split), generator=gen)[: STEPS * B]
    t = time.perf_counter()
    for idx in perm.split(B):
        x, y = split.batch(idx)
    return (time.perf_counter() - t) / STEPS * 1e3


def step_ms(spec: ArchSpec) -> float:
    model = build(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(B, spec.d_in), torch.rand(B, spec.d_out)
    for _ in range(2):  # warm-up
        F.mse_loss(model(x), y).backward()
    t = time.perf_counter()
    for _ in range(STEPS // 4):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / (STEPS // 4) * 1e3


models = {f"{fam} smallest denoise (3072->3072)": smallest(fam, 3072, 3072) for fam in ("hourglass", "conventional")}
results: dict[str, list[float]] = {k: [] for k in [*variants, *models]}
for _ in range(REPEATS):
    for name, split in variants.items():
        results[name].append(data_ms(split))
    for name, spec in models.items():
        results[name].append(step_ms(spec))
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={N}, batch {B}")
for name, times in results.items():
    print(f"{name:42s} {statistics.median(times):8.2f} ms/batch  (min {min(times):.2f})")
print(f"host memory of the rows: float32 {N * 3072 * 4 / 2**30:.2f} GiB, uint8 {N * 3072 / 2**30:.2f} GiB; "
      f"ImageNet-32 (1,281,167 images): float32 {1281167 * 3072 * 4 / 2**30:.1f} GiB, "
      f"uint8 {1281167 * 3072 / 2**30:.1f} GiB")
