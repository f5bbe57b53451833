"""What a repack costs against one packed training step (packed.repack_pays counts an eager repack as free).

    python bench/repack.py            # CPU, about half a minute
    python bench/repack.py --device cuda

For each case: a pack of K same-shape members (batch 128, 784 -> 784) takes a few steps, then
drops one member: PackedMLP.select + PackStep.select (the rebuild train_packed(repack=True) does at
an epoch's end, eager: no CUDA graph capture). Prints the median step time, the median rebuild time
and their ratio, over --reps interleaved repetitions.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from hgsearch.model.families import ArchSpec
from hgsearch.training.packed import PackedMLP, PackStep

BATCH = 128
CASES = [("hourglass 5.8M (1024,128,16)", ArchSpec("hourglass", 784, 784, 1024, 128, 16), 4),
         ("hourglass 1.1M (785,115,2)", ArchSpec("hourglass", 784, 784, 785, 115, 2), 8)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: ArchSpec, k: int, device: torch.device, reps: int) -> tuple[float, float]:
    """(median seconds of one step, median seconds of a rebuild dropping one member)."""
    model = PackedMLP([spec] * k, seed=0).to(device)
    stepper = PackStep(model, [1e-3] * k, total_steps=1000, weight_decay=0.01)
    x, y = torch.rand(BATCH, spec.d_in, device=device), torch.rand(BATCH, spec.d_out, device=device)
    stepper.step(x, y)  # warm-up: allocations, moments
    steps, rebuilds = [], []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        stepper.step(x, y)
        sync(device)
        steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        live = list(range(1, k))
        smaller = model.select(live)
        stepper.select(smaller, live, graphs=False)
        sync(device)
        rebuilds.append(time.perf_counter() - t0)
    return statistics.median(steps), statistics.median(rebuilds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  torch {torch.__version__}  threads {torch.get_num_threads()}  device {device}")
    print("| case | K | step s | rebuild s (drop 1) | rebuild / step |")
    print("|---|---|---|---|---|")
    for name, spec, k in CASES:
        step, rebuild = measure(spec, k, device, args.reps)
        print(f"| {name} | {k} | {step:.4f} | {rebuild:.4f} | {rebuild / step:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
