"""Packed training on one GPU: throughput of loop.train vs packs (K, CUDA graphs, bf16), padding waste, exactness.

    python bench/gpu_packs.py              # on a CUDA machine: about 3-5 minutes, stops itself at --limit
    python bench/gpu_packs.py --quick      # tiny sizes on the CPU (no CUDA cases): a smoke test
    python bench/gpu_packs.py --waste-only # only the padding-waste table (CPU, seconds)

Sections, each case fail-soft (an error is printed and the next case runs):
  waste       configurations drawn from the default search space (hgsearch.model.space.sample, Optuna
              RandomSampler, and TPESampler with constant liar after 64 told trials of a toy
              objective, 128 pending trials, both families, 28x28 geometry 784->784) at budgets
              1.5M/3M/5M, grouped by hgsearch.training.packing
              vs naive packs in arrival order: padded FLOPs / useful FLOPs - 1, and the estimated
              time of the packs relative to training each member alone (cost model in training/packing.py).
  peak        best fp32 and bf16 rate of an 8192^2 matmul (MFU denominators).
  naive       loop.train (hgsearch's one-trial path) on resident synthetic data, fp32 and bf16.
  packed      the 5.8M Hourglass (784->784, d_z 1024, d_h 128, 16 blocks) packed K = 1, 8, 32, 128,
              eager vs CUDA graph, fp32 vs bf16 autocast: samples/s counts every member's samples.
  hetero      a 5M default-space pool grouped into packs (K from free memory): member samples/s
              and useful TFLOP/s (6 x real params per sample; padding not counted).
  exact       a heterogeneous pack (both families, fixed W_in, 3 tasks) vs loop.train per member on
              the same device, fp32 both: the largest validation PSNR difference (target < 1e-3 dB
              on the CPU; float32 GPU kernels may round differently).
Writes $OUT/gpu_packs.json (or --json PATH) after every case, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from hgsearch.data.registry import Dataset, ImageSet
from hgsearch.data.tasks import Split, TaskData, prepare
from hgsearch.model.families import ArchSpec
from hgsearch.training import loop as train_mod
from hgsearch.training.packed import PackedMLP, PackStep, train_packed
from hgsearch.training.packing import pack_cost, pack_limits, padding_waste, plan_packs

BATCH = 128
HG5M = ArchSpec("hourglass", 784, 784, 1024, 128, 16)


class Bench:
    """Collects result rows, prints them as they come, rewrites the JSON after each one."""

    def __init__(self, json_path: Path | None, limit: float) -> None:
        self.rows: list[dict] = []
        self.json_path, self.t0, self.limit = json_path, time.perf_counter(), limit

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.t0)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        if self.json_path is not None:
            tmp = self.json_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"machine": machine(), "rows": self.rows}, indent=1))
            tmp.replace(self.json_path)

    def case(self, section: str, name: str, fn, min_left: float = 5.0) -> None:
        """Run one case; errors (OOM included) are printed and recorded, never fatal."""
        if self.left() < min_left:
            self.add({"section": section, "case": name, "error": "skipped: out of time"})
            return
        try:
            for row in fn():
                self.add({"section": section, "case": name, **row})
        except Exception as e:  # fail soft: one broken case must not cost the others
            self.add({"section": section, "case": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            traceback.print_exc(limit=3)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def machine() -> dict:
    info = {"host": platform.node(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ waste
def toy_objective(spec: ArchSpec, lr: float) -> float:
    """A smooth stand-in for -PSNR (best at depth 6, d_h/d_z 0.1, lr 1e-3, larger models) so TPE concentrates."""
    return (math.log(spec.depth / 6) ** 2 + math.log(spec.bottleneck / spec.width / 0.1) ** 2
            + math.log(lr / 1e-3) ** 2 - 0.5 * math.log(spec.params))


def draw(budget: int, n: int, sampler, d: int, told: int = 0) -> list[ArchSpec]:
    """n pending trials of the default space, the families alternating (those that fit the budget),
    after `told` completed trials of toy_objective per family (0: the first asks of a fresh study)."""
    # Imported here: a GPU machine without Optuna still runs every section that does not sample.
    import optuna

    from hgsearch.config import SpaceConfig
    from hgsearch.model.space import sample, size_range

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    families = [f for f in ("hourglass", "conventional") if size_range(f, d, d, budget, SpaceConfig())]
    studies = {f: optuna.create_study(sampler=sampler) for f in families}
    for fam, study in studies.items():
        for _ in range(told):
            trial = study.ask()
            spec, lr = sample(trial, fam, budget, d, d, SpaceConfig(), False)
            study.tell(trial, toy_objective(spec, lr))
    specs = []
    for i in range(n):
        fam = families[i % len(families)]
        spec, _ = sample(studies[fam].ask(), fam, budget, d, d, SpaceConfig(), False)
        specs.append(spec)
    return specs


def waste_rows(budgets: tuple[int, ...], n: int, d: int, ks: tuple[int, ...]):
    import optuna

    for budget in budgets:
        for sname in ("random", "tpe after 64"):
            sampler = (optuna.samplers.RandomSampler(seed=budget) if sname == "random"
                       else optuna.samplers.TPESampler(seed=budget, constant_liar=True))
            specs = draw(budget, n, sampler, d, told=0 if sname == "random" else 64)
            alone = pack_cost(specs, [[i] for i in range(len(specs))])
            for k in ks:
                packs = plan_packs(specs, k)
                naive = [list(range(i, min(i + k, n))) for i in range(0, n, k)]
                yield {"budget": budget, "sampler": sname, "n": n, "max_k": k, "packs": len(packs),
                       "waste": padding_waste(specs, packs), "naive_waste": padding_waste(specs, naive),
                       "time_vs_alone": pack_cost(specs, packs) / alone,
                       "naive_time_vs_alone": pack_cost(specs, naive) / alone}


# ------------------------------------------------------------------------------------- throughput
def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, seconds: float = 0.5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
        if k % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * k / (time.perf_counter() - t0)


def synthetic(d_in: int, d_out: int, n: int, device: torch.device) -> TaskData:
    g = torch.Generator(device="cpu").manual_seed(0)
    split = lambda m: Split(torch.rand(m, d_in, generator=g).to(device),  # noqa: E731
                            torch.rand(m, d_out, generator=g).to(device))
    return TaskData("superres", "synthetic", "", (1, 1, d_out), split(n), split(BATCH), split(BATCH), 0.0)


def naive_rows(spec: ArchSpec, device: torch.device, steps: int, bf16: bool):
    """loop.train for one epoch of `steps` batches; the first call pays lazy initialisation, so twice."""
    data = synthetic(spec.d_in, spec.d_out, steps * BATCH, device)
    train_mod.CUDA_BF16 = bf16
    train_mod.train(spec, synthetic(spec.d_in, spec.d_out, 4 * BATCH, device), lr=1e-3, epochs=1, device=device)
    sync(device)
    t0 = time.perf_counter()
    train_mod.train(spec, data, lr=1e-3, epochs=1, device=device)
    sync(device)
    sps = steps * BATCH / (time.perf_counter() - t0)
    yield {"K": 1, "graphs": False, "bf16": bf16, "samples_s": sps, "useful_tflops": 6 * spec.params * sps / 1e12}


def time_steps(stepper: PackStep, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               seconds: float) -> tuple[int, float]:
    """Warm up (this captures the graph), then run whole blocks of 5 steps for about `seconds`."""
    for _ in range(2):
        stepper.step(x, y)
    sync(device)
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(5):
            stepper.step(x, y)
        steps += 5
        sync(device)
        if time.perf_counter() - t0 > seconds:
            return steps, time.perf_counter() - t0


def packed_rows(spec: ArchSpec, ks: tuple[int, ...], device: torch.device, variants, seconds: float):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(BATCH, spec.d_in, generator=g).to(device)
    y = torch.rand(BATCH, spec.d_out, generator=g).to(device)
    for k in ks:
        model = PackedMLP([spec] * k, seed=0).to(device)  # built once per K, shared by the variants
        for graphs, bf16 in variants:
            try:
                stepper = PackStep(model, [1e-3] * k, total_steps=10**6, weight_decay=0.01, graphs=graphs, bf16=bf16)
                steps, dt = time_steps(stepper, x, y, device, seconds)
                sps = k * steps * BATCH / dt
                yield {"K": k, "graphs": graphs, "bf16": bf16, "samples_s": sps,
                       "useful_tflops": 6 * spec.params * sps / 1e12}
            except Exception as e:  # e.g. out of memory at the largest K: keep the other variants
                yield {"K": k, "graphs": graphs, "bf16": bf16, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            finally:
                stepper = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del model


def hetero_rows(budget: int, n: int, d: int, device: torch.device, variants, seconds: float,
                max_k: int | None):
    import optuna

    specs = draw(budget, n, optuna.samplers.RandomSampler(seed=1), d)
    k, max_bytes = pack_limits(device, override=max_k)
    packs = plan_packs(specs, k, max_bytes=max_bytes, batch_size=BATCH)
    useful = sum(s.params for s in specs)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(BATCH, d, generator=g).to(device)
    y = torch.rand(BATCH, d, generator=g).to(device)
    models = [PackedMLP([specs[i] for i in p], seed=0).to(device) for p in packs]
    for graphs, bf16 in variants:
        total = 0.0  # seconds to give every member the same number of samples
        per_pack = max(seconds / len(packs), 0.05)
        for p, model in zip(packs, models, strict=True):
            stepper = PackStep(model, [1e-3] * len(p), total_steps=10**6, weight_decay=0.01, graphs=graphs, bf16=bf16)
            steps, dt = time_steps(stepper, x, y, device, per_pack)
            total += dt / steps  # one step of every pack = one batch for every member
            del stepper
        sps = n * BATCH / total
        yield {"members": n, "packs": len(packs), "max_k": k, "waste": padding_waste(specs, packs), "graphs": graphs,
               "bf16": bf16, "samples_s": sps, "useful_tflops": 6 * useful / n * sps / 1e12}


# ---------------------------------------------------------------------------------------- exact
def smooth_dataset(n_train: int, n_test: int, side: int) -> Dataset:
    """Blurry blob images with labels: learnable structure, built in memory (no files needed)."""
    def images(n: int, seed: int) -> ImageSet:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:side, 0:side] / side
        labels = rng.integers(0, 10, n)
        cx, cy = (labels % 5 + 0.5) / 5, (labels // 5 + 0.5) / 2 + rng.normal(0, 0.05, n)
        img = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / 0.02)
        img = np.clip(img + rng.uniform(0, 0.2, (n, side, side)), 0, 1)
        return ImageSet((img * 255).astype(np.uint8)[:, None], labels.astype(np.int64))
    return Dataset("smooth", images(n_train, 0), images(n_test, 1), "", "memory")


def exact_rows(device: torch.device, side: int, n_train: int, graphs: bool, epochs: int = 2):
    dataset = smooth_dataset(n_train, 256, side)
    train_mod.CUDA_BF16 = False  # fp32 on both sides: the comparison is of the algorithms
    for task in ("denoise", "superres", "classify"):
        d = prepare(dataset, task, val_size=256, device=device)
        d_x = max(d.d_in, d.d_out)
        specs = [ArchSpec("hourglass", d.d_in, d.d_out, d_x + 60, 24, 5),
                 ArchSpec("hourglass", d.d_in, d.d_out, d_x + 7, 3, 1),
                 ArchSpec("conventional", d.d_in, d.d_out, d_x, d_x + 40, 2),
                 ArchSpec("hourglass", d.d_in, d.d_out, d_x + 30, 9, 3, fixed_win=True)]
        lrs = [2e-3, 1e-3, 1.5e-3, 3e-3]
        _, packed = train_packed(specs, d, lrs=lrs, epochs=epochs, device=device, graphs=graphs, seed=5)
        diffs = []
        for spec, lr, res in zip(specs, lrs, packed, strict=True):
            _, alone = train_mod.train(spec, d, lr=lr, epochs=epochs, device=device, seed=5)
            diffs.append(abs(res.psnr_val - alone.psnr_val))
        yield {"task": task, "graphs": graphs, "members": len(specs), "max_dpsnr_db": max(diffs),
               "psnr_alone_0": alone.psnr_val}


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU, no CUDA cases")
    ap.add_argument("--waste-only", action="store_true", help="only the padding-waste table")
    ap.add_argument("--limit", type=float, default=420.0, help="seconds; the script stops itself by then")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per throughput case")
    ap.add_argument("--pack-size", type=int, default=None, help="override the hetero section's K")
    ap.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu_packs.json when $OUT is set")
    args = ap.parse_args(argv)
    json_path = args.json or (Path(os.environ["OUT"]) / "gpu_packs.json" if os.environ.get("OUT") else None)
    bench = Bench(json_path, args.limit)
    # A hard stop a little after the limit, whatever a CUDA call is doing: what was measured is saved.
    watchdog = threading.Timer(args.limit + 30, lambda: (print("time limit: exiting", flush=True), os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    print(f"# {machine()}  device {device}  limit {args.limit:.0f} s", flush=True)

    print("## waste: padded FLOPs / useful FLOPs - 1, bucketed vs naive packs (784->784 default space)")
    n_pool = 32 if args.quick else 128
    bench.case("waste", "default space", lambda: waste_rows((1_500_000, 3_000_000, 5_000_000), n_pool, 784,
                                                            (8, 32) if args.quick else (32, 128)))
    if args.waste_only:
        return 0

    if args.quick:  # CPU smoke test: tiny shapes, eager only
        spec, ks, hetero = ArchSpec("hourglass", 64, 64, 96, 16, 4), (1, 4), (60_000, 16, 64)
        variants = [(False, False)]
    else:
        spec, ks, hetero = HG5M, (1, 8, 32, 128), (5_000_000, 128, 784)
        variants = [(False, False), (True, False), (False, True), (True, True)]
    if cuda:
        print("## peak: 8192^2 matmul TFLOP/s")
        bench.case("peak", "matmul", lambda: [{"fp32": matmul_peak(device, torch.float32) / 1e12,
                                               "bf16": matmul_peak(device, torch.bfloat16) / 1e12,
                                               "tf32_allowed": torch.backends.cuda.matmul.allow_tf32}])
    print(f"## naive: loop.train, {spec}")
    for bf16 in ([False, True] if cuda else [False]):
        bench.case("naive", f"loop.train bf16={bf16}",
                   lambda bf16=bf16: naive_rows(spec, device, 20 if args.quick else 300, bf16))
    print("## packed: same-shape pack, samples/s over all members")
    bench.case("packed", str(spec),
               lambda: packed_rows(spec, ks, device, variants, 0.3 if args.quick else args.seconds))
    print("## hetero: a default-space pool grouped into packs")
    bench.case("hetero", f"budget {hetero[0]:,}", lambda: hetero_rows(
        hetero[0], hetero[1], hetero[2], device, [v for v in variants if v[0] or not cuda],
        0.5 if args.quick else 4 * args.seconds, args.pack_size), min_left=30)
    print("## exact: heterogeneous pack vs loop.train per member, fp32, |dPSNR val| in dB")
    if cuda:
        for graphs in (True, False):
            bench.case("exact", f"cuda graphs={graphs}", lambda graphs=graphs: exact_rows(device, 16, 1200, graphs),
                       min_left=20)
    else:
        bench.case("exact", "cpu eager", lambda: exact_rows(device, 8, 300, False, epochs=1), min_left=10)

    errors = [r for r in bench.rows if "error" in r]
    print(f"\n{len(bench.rows)} rows, {len(errors)} errors, {time.perf_counter() - bench.t0:.0f} s"
          + (f"; JSON in {json_path}" if json_path else ""))
    summary(bench.rows)
    return 0


def summary(rows: list[dict]) -> None:
    """The compact table: one line per throughput case, ratios against loop.train fp32."""
    base = next((r["samples_s"] for r in rows
                 if r["section"] == "naive" and not r.get("bf16") and "samples_s" in r), None)
    print("| section | K | graphs | bf16 | samples/s | x loop.train fp32 | useful TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "samples_s" in r:
            k = r.get("K", f"{r.get('members')}/{r.get('packs')}p")
            ratio = f"{r['samples_s'] / base:.1f}" if base else "-"
            print(f"| {r['section']} | {k} | {r.get('graphs')} | {r.get('bf16')} | {r['samples_s']:.0f} | {ratio} "
                  f"| {r['useful_tflops']:.2f} |")
    for r in rows:
        if r["section"] == "exact" and "max_dpsnr_db" in r:
            print(f"exact {r['task']} graphs={r['graphs']}: max |dPSNR| {r['max_dpsnr_db']:.2e} dB")


if __name__ == "__main__":
    sys.exit(main())
