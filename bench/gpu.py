"""The GPU check to run first: the naive PyTorch loop vs hgsearch's packs on a 20-trial 5M search sample.

    PYTHONPATH=$PWD python3 bench/gpu.py                    # any CUDA machine: about 4 minutes, stops itself at --limit
    PYTHONPATH=$PWD python3 bench/gpu.py --data-dir DIR     # Fashion-MNIST IDX files in DIR instead of synthetic data
    python bench/gpu.py --device cpu                        # CPU dry run (tiny shapes, small K): seconds

The sample: --trials configurations of the default search space at budget --budget (families
alternating, Optuna RandomSampler seeded 0, hgsearch.model.space.sample) on 28x28 -> x2 super-resolution
(d_in 196, d_out 784). Data: random uint8 images (synthetic, unlearnable: timing only) or
Fashion-MNIST with --data-dir, 50,000 training images, resident on the GPU for hgsearch's path.

  naive     the textbook per-trial loop: torch.utils.data.DataLoader over a TensorDataset on the host
            (batch 128, shuffle, num_workers=0, pin_memory), fp32, models.build(spec), torch.optim.AdamW,
            one model at a time, no packing, no graphs; --naive-steps timed steps per configuration
            (a subset of the configurations if time is short, extrapolated: the output says so).
  packs     hgsearch's path: buckets.plan_packs (K from the device memory) + packed.PackStep with CUDA
            graphs, fp32 and bf16 autocast, batches gathered from the resident data as train_packed does.
  psnr      --psnr-members members trained 1 epoch both ways (same data order, seed, initial weights,
            linear lr decay) and evaluated alike (train.evaluate's PSNR): max |dPSNR| per member.

Member samples/s S = trials x 128 / (seconds for every trial to take one batch of 128);
trials per GPU-hour = 3600 x S / (50 epochs x 50,000 images) (the paper protocol, training steps only:
no evaluation or checkpoints); useful TFLOP/s = 6 x params x samples/s summed over trials (padding
not counted); MFU = useful / the measured 8192^3 matmul peak (bf16, and fp32 with TF32 allowed).
Each section is fail-soft. Writes $OUT/gpu.json (or --json) after each section. Without CUDA and
without --device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from gpu_packs import matmul_peak, sync  # bench/ is sys.path[0] when a script in it runs

BATCH = 128
EPOCHS, IMAGES = 50, 50_000  # the paper protocol the trials-per-hour column extrapolates to
GRAPH_WARM = 3  # untimed steps per pack before timing; the first captures the CUDA graph


def tf32_peak(device: torch.device, n: int, seconds: float) -> float:
    """gpu_packs.matmul_peak of float32 with TF32 allowed (the fp32 peak a GPU can reach)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return matmul_peak(device, torch.float32, n, seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def draw(n: int, budget: int, d_in: int, d_out: int):
    """n configurations of the default space (families alternating, those that fit), RandomSampler seed 0."""
    import optuna

    from hgsearch.config import SpaceConfig
    from hgsearch.model.space import sample, size_range

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    families = [f for f in ("hourglass", "conventional") if size_range(f, d_in, d_out, budget, SpaceConfig())]
    studies = {f: optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)) for f in families}
    out = []
    for i in range(n):
        fam = families[i % len(families)]
        out.append(sample(studies[fam].ask(), fam, budget, d_in, d_out, SpaceConfig(), False))
    return out


def load_data(args, device: torch.device, side: int, n_images: int):
    """Super-resolution TaskData on `device`: Fashion-MNIST from --data-dir or random uint8 images."""
    from hgsearch.data.registry import Dataset, ImageSet, load_dataset
    from hgsearch.data.tasks import prepare

    if args.data_dir:
        dataset = load_dataset("fashion-mnist", args.data_dir)
        label = f"Fashion-MNIST from {args.data_dir}"
    else:
        rng = np.random.default_rng(0)
        images = lambda m: ImageSet(rng.integers(0, 256, (m, 1, side, side), dtype=np.uint8),  # noqa: E731
                                    rng.integers(0, 10, m).astype(np.int64))
        dataset = Dataset("synthetic", images(n_images), images(max(n_images // 6, 64)), "", "memory")
        label = f"synthetic random uint8 {side}x{side} images (timing only, nothing to learn)"
    data = prepare(dataset, "superres", val_size=n_images // 6, device=device)
    return data, label


# ------------------------------------------------------------------------------------------ naive
def naive_loader(data, device: torch.device, order: list[int] | None = None):
    """The textbook DataLoader over host tensors (float32 inputs and targets)."""
    from torch.utils.data import DataLoader, TensorDataset

    from hgsearch.data.tasks import as_float

    ds = TensorDataset(data.train.inputs.cpu().float(), as_float(data.train.targets.cpu()))
    kw = {"sampler": order} if order is not None else {"shuffle": True}
    return DataLoader(ds, batch_size=BATCH, num_workers=0, pin_memory=device.type == "cuda", **kw)


def naive_trial(spec, lr: float, loader, device: torch.device, steps: int, total_steps: int, seed: int = 0,
                warmup: int = 5) -> tuple[torch.nn.Module, float]:
    """Train spec the textbook way for `steps` batches after `warmup`; returns (model, timed seconds)."""
    import torch.nn.functional as F

    from hgsearch.model.families import build

    torch.manual_seed(seed)
    model = build(spec).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / total_steps)
    model.train()
    done, t0 = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return model, time.perf_counter() - (t0 if t0 is not None else time.perf_counter())


def naive_section(specs, data, device, steps: int, budget_s: float) -> dict:
    loader = naive_loader(data, device)
    per_batch, t_start = [], time.perf_counter()
    for spec, lr in specs:
        if per_batch and time.perf_counter() - t_start > budget_s:
            break
        _, dt = naive_trial(spec, lr, loader, device, steps, total_steps=10**6)
        per_batch.append(dt / steps)
    measured = len(per_batch)
    # Configurations not measured are extrapolated at the measured ones' mean seconds per batch.
    round_s = sum(per_batch) + (len(specs) - measured) * float(np.mean(per_batch))
    params = sum(s.params for s, _ in specs)
    return {"measured_trials": measured, "trials": len(specs), "round_s": round_s,
            "samples_s": len(specs) * BATCH / round_s, "useful_flops": 6 * BATCH * params / round_s,
            "graphs": False, "bf16": False}


# ------------------------------------------------------------------------------------------ packs
def packs_section(specs, data, device, bf16: bool, seconds: float, pack_size: int | None) -> dict:
    """Every pack timed for about `seconds`; round = one step of every pack = one batch for every trial."""
    from hgsearch.training.packed import PackedMLP, PackStep
    from hgsearch.training.packing import pack_limits, padding_waste, plan_packs

    arch = [s for s, _ in specs]
    k, max_bytes = pack_limits(device, override=pack_size)
    packs = plan_packs(arch, k, max_bytes=max_bytes, batch_size=BATCH)
    graphs = device.type == "cuda"
    n = len(data.train)
    gen = torch.Generator(device=device).manual_seed(0)
    round_s, capture_errors, fell_back = 0.0, [], 0
    for p in packs:
        model = PackedMLP([arch[i] for i in p], seed=0).to(device)
        stepper = PackStep(model, [specs[i][1] for i in p], total_steps=10**6, weight_decay=0.01,
                           graphs=graphs, bf16=bf16)
        perm = torch.randperm(n, generator=gen, device=device)
        batches = perm[: n // BATCH * BATCH].view(-1, BATCH)
        for j in range(GRAPH_WARM):
            stepper.step(*data.train.batch(batches[j % len(batches)]))
        sync(device)
        steps, t0 = 0, time.perf_counter()
        while True:
            for _ in range(5):
                stepper.step(*data.train.batch(batches[steps % len(batches)]))
                steps += 1
            sync(device)
            if time.perf_counter() - t0 > seconds:
                break
        round_s += (time.perf_counter() - t0) / steps
        capture_errors += stepper.capture_errors
        fell_back += graphs and not stepper.graphs
        del stepper, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    params = sum(s.params for s in arch)
    return {"trials": len(specs), "packs": len(packs), "max_k": k, "sizes": [len(p) for p in packs],
            "waste": padding_waste(arch, packs), "round_s": round_s, "samples_s": len(specs) * BATCH / round_s,
            "useful_flops": 6 * BATCH * params / round_s, "graphs": graphs and not fell_back, "bf16": bf16,
            "capture_errors": capture_errors[:3], "packs_eager_fallback": fell_back}



# ------------------------------------------------------------------------------------------- psnr
def psnr_section(specs, data, device, members: int, train_rows: int) -> list[dict]:
    """Members trained 1 epoch the naive way and packed (fp32, bf16), same order/seed/weights: PSNRs."""
    from hgsearch.data.tasks import Split
    from hgsearch.training.loop import evaluate
    from hgsearch.training.packed import train_packed

    small = dataclasses.replace(data, train=Split(data.train.inputs[:train_rows], data.train.targets[:train_rows]))
    n = len(small.train)
    steps = -(-n // BATCH)
    # train_packed's data order: torch.randperm on the device with a generator seeded 0.
    order = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(0), device=device).tolist()
    loader = naive_loader(small, device, order)
    chosen = specs[:members]
    rows = []
    naive = []
    for spec, lr in chosen:
        model, _ = naive_trial(spec, lr, loader, device, steps, total_steps=steps, warmup=0)
        naive.append(evaluate(model, small.val))
    packed = {}
    for bf16 in (False, True) if device.type == "cuda" else (False,):
        _, res = train_packed([s for s, _ in chosen], small, lrs=[lr for _, lr in chosen], epochs=1,
                              device=device, bf16=bf16, seed=0)
        packed[bf16] = [getattr(r, "psnr_val", float("nan")) for r in res]
    for i, ((spec, lr), p) in enumerate(zip(chosen, naive, strict=True)):
        rows.append({"member": i, "spec": f"{spec.family} {spec.width}/{spec.bottleneck}/{spec.depth}",
                     "params": spec.params, "lr": lr, "psnr_naive": p,
                     **{("dpsnr_bf16" if b else "dpsnr_fp32"): abs(v[i] - p) for b, v in packed.items()}})
    return rows


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="cpu: a tiny dry run (small K and shapes, seconds); default: CUDA if present")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: synthetic images)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--budget", type=int, default=5_000_000)
    ap.add_argument("--limit", type=float, default=220.0, help="seconds; the script stops itself shortly after")
    ap.add_argument("--naive-steps", type=int, default=150, help="timed steps per configuration, naive loop")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per pack")
    ap.add_argument("--pack-size", type=int, default=None, help="override K (default: from device memory)")
    ap.add_argument("--psnr-members", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu.json when $OUT is set")
    args = ap.parse_args(argv)

    if args.device is None and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (bench/gpu.py --device cpu runs a tiny CPU dry run)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device: run on a GPU machine or use --device cpu",
              file=sys.stderr)
        return 2
    device = torch.device(args.device or "cuda")
    cpu = device.type == "cpu"
    if cpu:  # dry run: 8x8 images (16 -> 64), a budget that fits that geometry, a few steps
        side, n_images, budget, trials = 8, 768, 40_000, min(args.trials, 6)
        naive_steps, seconds, psnr_rows, mm = 4, 0.05, 256, 256
    else:
        side, n_images, budget, trials = 28, 60_000, args.budget, args.trials
        naive_steps, seconds, psnr_rows, mm = args.naive_steps, args.seconds, 20_000, 8192

    t0 = time.perf_counter()
    watchdog = threading.Timer(args.limit + 20, lambda: (print("time limit: exiting", flush=True), os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    json_path = args.json or (Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else None)
    result: dict = {"machine": {"host": platform.node(), "torch": torch.__version__,
                                "device": torch.cuda.get_device_name() if not cpu else "cpu",
                                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}}

    def save() -> None:
        if json_path is not None:
            json_path.with_suffix(".tmp").write_text(json.dumps(result, indent=1, default=str))
            json_path.with_suffix(".tmp").replace(json_path)

    def section(name: str, fn, min_left: float = 5.0):
        left = args.limit - (time.perf_counter() - t0)
        if left < min_left:
            result[name] = {"error": "skipped: out of time"}
        else:
            try:
                result[name] = fn()
            except Exception as e:  # fail soft: one broken section must not cost the others
                result[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                traceback.print_exc(limit=3)
            finally:
                if not cpu:
                    torch.cuda.empty_cache()
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}: done", flush=True)
        save()
        return result[name]

    print(f"# bench/gpu.py  {result['machine']}", flush=True)
    data, label = load_data(args, device, side, n_images)
    d_in, d_out = data.d_in, data.d_out
    specs = draw(trials, budget, d_in, d_out)
    result["sample"] = {"data": label, "train_rows": len(data.train), "d_in": d_in, "d_out": d_out,
                        "budget": budget, "trials": trials,
                        "specs": [{**s.to_dict(), "params": s.params, "lr": lr} for s, lr in specs]}
    peak = section("peak", lambda: {} if cpu else {"bf16": matmul_peak(device, torch.bfloat16, mm, 0.5),
                                                   "tf32": tf32_peak(device, mm, 0.5)})
    rest = lambda: args.limit - (time.perf_counter() - t0)  # noqa: E731
    naive = section("naive", lambda: naive_section(specs, data, device, naive_steps, 0.35 * rest()))
    fp32 = section("packs_fp32", lambda: packs_section(specs, data, device, False, seconds, args.pack_size))
    bf16 = (section("packs_bf16", lambda: packs_section(specs, data, device, True, seconds, args.pack_size))
            if not cpu else None)
    psnr = section("psnr", lambda: psnr_section(specs, data, device, args.psnr_members, psnr_rows), min_left=20)
    print_table(result, naive, [r for r in (fp32, bf16) if r], peak, psnr, trials, d_in, d_out, budget, label)
    print(f"\n{time.perf_counter() - t0:.0f} s" + (f"; JSON in {json_path}" if json_path else ""))
    return 0


def print_table(result, naive, packs, peak, psnr, trials, d_in, d_out, budget, label) -> None:
    m = result["machine"]
    print(f"\n## {trials}-trial sample at budget {budget:,}, {d_in} -> {d_out} super-resolution, batch {BATCH}, "
          f"{m['device']}, torch {m['torch']}")
    print(f"data: {label}")
    if m["device"] == "cpu":
        print("CPU DRY RUN: tiny shapes and budget, a plumbing check; no number here is a GPU measurement")
    if peak and "bf16" in peak:
        print(f"measured matmul peak: bf16 {peak['bf16'] / 1e12:.0f} TFLOP/s, fp32 with TF32 "
              f"{peak['tf32'] / 1e12:.0f} TFLOP/s")
    base = naive.get("samples_s")
    print("\n| path | samples/s | x naive | trials/GPU-hour | useful TFLOP/s | MFU vs bf16 peak | MFU vs tf32 peak |")
    print("|---|---|---|---|---|---|---|")
    rows = [("naive: DataLoader + AdamW, fp32, one trial at a time"
             + (f" ({naive['measured_trials']}/{naive['trials']} measured, rest extrapolated)"
                if naive.get("measured_trials", trials) < trials else ""), naive)]
    for r in packs:
        what = (f"hgsearch: {r['packs']} packs {r['sizes']}, waste {r['waste']:.2f}, "
                f"{'CUDA graphs' if r['graphs'] else 'eager'}, {'bf16' if r['bf16'] else 'fp32'}"
                if "samples_s" in r else "hgsearch packs")
        rows.append((what, r))
    for what, r in rows:
        if "samples_s" not in r:
            print(f"| {what} | {r.get('error', '-')} | | | | | |")
            continue
        sps, fl = r["samples_s"], r["useful_flops"]
        mfu = [f"{fl / peak[k]:.1%}" if peak and k in peak else "-" for k in ("bf16", "tf32")]
        ratio = f"{sps / base:.1f}x" if base else "-"
        print(f"| {what} | {sps:,.0f} | {ratio} | {3600 * sps / (EPOCHS * IMAGES):,.1f} | {fl / 1e12:.2f} "
              f"| {mfu[0]} | {mfu[1]} |")
    print(f"\nsamples/s = {trials} trials x {BATCH} / (seconds for every trial to take one batch); "
          f"trials/GPU-hour = 3600 x samples/s / ({EPOCHS} epochs x {IMAGES:,} images), training steps only; "
          "useful TFLOP/s = 6 x params x samples/s (padding not counted); MFU = useful / measured matmul peak.")
    if isinstance(psnr, list):
        print("\n| member | configuration | params | lr | naive PSNR (dB) "
              "| \\|dPSNR\\| packs fp32 | \\|dPSNR\\| packs bf16 |")
        print("|---|---|---|---|---|---|---|")
        for r in psnr:
            d = [f"{r[k]:.1e}" if k in r else "-" for k in ("dpsnr_fp32", "dpsnr_bf16")]
            print(f"| {r['member']} | {r['spec']} | {r['params']:,} | {r['lr']:.2g} | {r['psnr_naive']:.3f} "
                  f"| {d[0]} | {d[1]} |")
        worst = max(r.get("dpsnr_fp32", float("nan")) for r in psnr)
        print(f"PSNR agreement (1 epoch, same data order, seed and initial weights): max |dPSNR| fp32 {worst:.1e} dB "
              f"-> target <= 0.05 dB: {'MET' if worst <= 0.05 else 'NOT MET'}")
    else:
        print(f"PSNR agreement: {psnr.get('error') if isinstance(psnr, dict) else '-'}")
    best = max((r["samples_s"] for r in packs if "samples_s" in r), default=None)
    if base and best:
        x = best / base
        print(f"target: >= 30x the naive loop's trials per GPU-hour: {x:.1f}x -> {'MET' if x >= 30 else 'NOT MET'}")
    else:
        print("target: >= 30x the naive loop's trials per GPU-hour: not measured (a section failed)")


if __name__ == "__main__":
    sys.exit(main())
