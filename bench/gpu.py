"""The GPU check to run first: the naive PyTorch loop vs hgsearch's packs on 20- and 40-trial 5M search samples.

    PYTHONPATH=$PWD python3 bench/gpu.py --profile          # any CUDA machine: about 7 minutes, stops itself at --limit
    PYTHONPATH=$PWD python3 bench/gpu.py --data-dir DIR     # Fashion-MNIST IDX files in DIR instead of synthetic data
    python bench/gpu.py --device cpu --profile              # CPU dry run (tiny shapes, small K): seconds

The samples: --trials configurations of the default search space at budget --budget (families
alternating) and --trials-one of Hourglass alone (a real round is one family at a time), Optuna
RandomSampler seeded 0 (hgsearch.model.space.sample), on 28x28 -> x2 super-resolution (d_in 196,
d_out 784). Data: random uint8 images (synthetic, unlearnable: timing only) or Fashion-MNIST with
--data-dir, 50,000 training images, resident on the GPU for hgsearch's path.

  copy      device-to-device copy of a 1 GB tensor, CUDA events: the bandwidth the rounds are measured against.
  block     (--profile) kernels of one training block's forward and backward (packed.train_block), eager
            vs torch.compile'd (packed.compiled_block), and the compiled one's first-call (compile) time.
  naive     per sample, the textbook per-trial loop: torch.utils.data.DataLoader over a TensorDataset on
            the host (batch 128, shuffle, num_workers=0, pin_memory), fp32, families.build(spec),
            torch.optim.AdamW, one model at a time, no packing, no graphs; --naive-steps timed steps per
            configuration (a subset of the configurations if time is short, extrapolated: the output says so).
  packs     per sample and variant (fp32; on CUDA bf16 autocast, and bf16 with compiled blocks unless
            --no-compile): packing.plan_round (K from the device memory), one packed.PackStep per pack
            with CUDA graphs, each on its own stream (training.rounds). A round = every pack takes one step
            on the round's batch, all packs launched back to back, deepest first, with no sync between
            them; whole rounds are timed (not a sum of per-pack times), the plan's waste and modelled round
            time (packing.RoundModel) beside plan_packs's serial plan,
            and each pack alone beside them. --profile adds each pack's kernels per step (CUDA: device
            events of one eager step, which the graph replays, and of one replayed step; CPU: aten ops of
            one step, views left out).
  psnr      --psnr-members members trained 1 epoch both ways (same data order, seed, initial weights,
            linear lr decay) and evaluated alike (loop.evaluate's PSNR): max |dPSNR| per member.

Member samples/s S = trials x 128 / (seconds of one round); trials per GPU-hour = 3600 x S / (50 epochs x
50,000 images) (the paper protocol, training steps only: no evaluation or checkpoints); achieved
bandwidth = BYTES_PER_PARAM (40: fused AdamW 28, gradient 4, weight reads 8) x padded parameters of
every member / round seconds, and its share of the measured copy bandwidth (the yardstick: a step at
batch 128 is memory-bound); useful TFLOP/s = 6 x params x samples/s summed over trials (padding not
counted); MFU = useful / the measured 8192^3 matmul peak (bf16, and fp32 with TF32 allowed).
Each section is fail-soft. Writes $OUT/gpu.json (or --json) after each section. Without CUDA and
without --device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
# Bytes a training step must move per (padded) parameter, issue 21's model: fused AdamW 28 (read p, g,
# m, v; write p, m, v), the gradient's write 4, the weight reads of forward and backward 8.
BYTES_PER_PARAM = 40
# Aten ops that launch no kernel (views, allocation, metadata): left out of the CPU's kernel count.
VIEW_OPS = {"aten::" + n for n in (
    "select", "view", "unbind", "transpose", "expand", "as_strided", "reshape", "t", "detach", "alias", "unsqueeze",
    "slice", "permute", "empty", "_reshape_alias", "lift_fresh", "squeeze", "empty_strided", "resolve_conj",
    "resolve_neg", "_unsafe_view", "empty_like", "detach_", "result_type", "contiguous")}


def tf32_peak(device: torch.device, n: int, seconds: float) -> float:
    """gpu_packs.matmul_peak of float32 with TF32 allowed (the fp32 peak a GPU can reach)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return matmul_peak(device, torch.float32, n, seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def draw(n: int, budget: int, d_in: int, d_out: int, families: tuple[str, ...] = ("hourglass", "conventional")):
    """n configurations of the default space (families alternating, those that fit), RandomSampler seed 0."""
    import optuna

    from hgsearch.config import SpaceConfig
    from hgsearch.model.space import sample, size_range

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    families = [f for f in families if size_range(f, d_in, d_out, budget, SpaceConfig())]
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
def variants(device: torch.device, compile_blocks: bool) -> list[tuple[str, bool, bool]]:
    """(name, bf16, compile_blocks) of each timed packed path: on CUDA fp32, bf16 and bf16 + compiled blocks."""
    out = [("fp32", False, False)]
    if device.type == "cuda":
        out.append(("bf16", True, False))
    if compile_blocks:
        out.append(("bf16+compiled" if device.type == "cuda" else "fp32+compiled", device.type == "cuda", True))
    return out


def make_steppers(specs, packs, device, bf16: bool, compile_blocks: bool, streams=None) -> list:
    from hgsearch.training.packed import PackedMLP, PackStep

    # compile_blocks and stream only when used: a PackStep from before they existed takes no such
    # argument (before/after runs).
    streams = streams or [None] * len(packs)
    out = []
    for p, stream in zip(packs, streams, strict=True):
        extra = {"compile_blocks": True} if compile_blocks else {}
        if stream is not None:
            extra["stream"] = stream
        out.append(PackStep(PackedMLP([specs[i][0] for i in p], seed=0).to(device), [specs[i][1] for i in p],
                            total_steps=10**6, weight_decay=0.01, graphs=device.type == "cuda", bf16=bf16, **extra))
    return out


def on_stream(stepper) -> contextlib.AbstractContextManager:
    """Run a pack's step on its own stream, as training.rounds does (the current stream without one)."""
    stream = getattr(stepper, "stream", None)
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def rounds_section(specs, data, device, variant: tuple[str, bool, bool], seconds: float, pack_size: int | None,
                   profile: bool, copy_bw: float | None, kernel_s: float | None = None, plan: str = "round") -> dict:
    """Whole rounds timed: every pack takes one step (one batch for every trial), all packs launched
    back to back with no sync between them, as training.rounds drives them (packing.plan_round's
    packs, deepest first, each on its own CUDA stream, the deepest high-priority); each pack alone
    timed beside. Reports each plan's padding waste and modelled round time (packing.RoundModel with
    --kernel-us and, on CUDA, the measured copy bandwidth), plan_packs's serial plan beside."""
    from hgsearch.training.packing import (
        BANDWIDTH,
        KERNEL_S,
        RoundModel,
        pack_limits,
        padded_params,
        padding_waste,
        plan_packs,
        plan_round,
    )
    from hgsearch.training.rounds import round_order, round_streams

    name, bf16, compile_blocks = variant
    arch = [s for s, _ in specs]
    k, max_bytes = pack_limits(device, override=pack_size)
    bandwidth = copy_bw if copy_bw and device.type == "cuda" else BANDWIDTH
    model = RoundModel(kernel_s=kernel_s or KERNEL_S, bandwidth=bandwidth, compiled=compile_blocks)
    serial = plan_packs(arch, k, max_bytes=max_bytes, batch_size=BATCH)
    packs = serial if plan == "serial" else plan_round(arch, k, max_bytes=max_bytes, batch_size=BATCH, model=model)
    packs = [packs[i] for i in round_order([max(arch[i].depth for i in p) for p in packs])]
    streams = round_streams(device, len(packs))
    steppers = make_steppers(specs, packs, device, bf16, compile_blocks, streams)
    n = len(data.train)
    perm = torch.randperm(n, generator=torch.Generator(device=device).manual_seed(0), device=device)
    batches = [data.train.batch(idx) for idx in perm[: n // BATCH * BATCH].view(-1, BATCH)[:8]]
    for stream in streams:  # the packs' weights and the batches are made on the current stream
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))
    t_build = time.perf_counter()
    for j in range(GRAPH_WARM):  # the first full-batch step compiles (if asked) and captures the graph
        for st in steppers:
            with on_stream(st):
                st.step(*batches[j % len(batches)])
    sync(device)
    warm_s = time.perf_counter() - t_build

    chunk = 5 if device.type == "cuda" else 1  # rounds between syncs (a CPU round can take a second)

    def timed(group) -> float:
        """Seconds per round of the steppers in `group` (whole rounds, synced every `chunk`, about `seconds`)."""
        rounds, t0 = 0, time.perf_counter()
        while True:
            for _ in range(chunk):
                x, y = batches[rounds % len(batches)]  # one gather per round: every pack shares the seed's batch
                for st in group:
                    with on_stream(st):
                        st.step(x, y)
                rounds += 1
            sync(device)
            if time.perf_counter() - t0 > seconds:
                return (time.perf_counter() - t0) / rounds

    round_s = timed(steppers)
    pack_rows = []
    for p, st in zip(packs, steppers, strict=True):
        members = [arch[i] for i in p]
        row = {"k": len(p), "padded_params": padded_params(members), "depth": max(s.depth for s in members),
               "width": max(s.width for s in members), "bottleneck": max(s.bottleneck for s in members),
               "step_s": timed([st])}
        if profile:
            row.update(step_profile(st, *batches[0], device))
        pack_rows.append(row)
    # The traffic a step cannot avoid (issue 21's model): BYTES_PER_PARAM per padded parameter.
    round_bytes = BYTES_PER_PARAM * sum(len(p) * r["padded_params"] for p, r in zip(packs, pack_rows, strict=True))
    params = sum(s.params for s in arch)
    out = {"variant": name, "trials": len(specs), "packs": len(packs), "max_k": k, "sizes": [len(p) for p in packs],
           "waste": padding_waste(arch, packs), "round_s": round_s,
           "plan": "plan_packs" if plan == "serial" else "plan_round",
           "modelled_round_s": model.round_time(arch, packs), "kernel_s": model.kernel_s,
           "model_bandwidth": model.bandwidth,
           "serial_plan": {"packs": len(serial), "sizes": [len(p) for p in serial],
                           "waste": padding_waste(arch, serial), "modelled_round_s": model.round_time(arch, serial)},
           "sum_of_pack_s": sum(r["step_s"] for r in pack_rows),
           "samples_s": len(specs) * BATCH / round_s, "useful_flops": 6 * BATCH * params / round_s,
           "round_bytes": round_bytes, "bandwidth": round_bytes / round_s,
           "bandwidth_share": round_bytes / round_s / copy_bw if copy_bw else None,
           "graphs": device.type == "cuda" and all(st.graphs for st in steppers), "bf16": bf16,
           "compile_blocks": compile_blocks and all(st.model.compile_blocks for st in steppers),
           "warmup_s": warm_s, "per_pack": pack_rows,
           "capture_errors": [e for st in steppers for e in st.capture_errors][:3],
           "compile_errors": [e for st in steppers for e in getattr(st, "compile_errors", [])][:3],
           "packs_eager_fallback": sum(device.type == "cuda" and not st.graphs for st in steppers)}
    if profile:
        out["kernels_per_round"] = sum(r["kernels_step"] for r in pack_rows)
    return out


def top_level(events) -> list:
    """Profiler events that no aten op called (an op's own sub-ops not counted twice)."""
    return [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]


def step_profile(stepper, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    """Work items of one step: CUDA kernels (device events) of one eager step and of one replayed graph
    step; on the CPU, the aten ops one eager step dispatches (all, and without views and allocations)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        def kernels(fn) -> collections.Counter:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            return collections.Counter(e.name for e in prof.events()
                                       if e.device_type == torch.autograd.DeviceType.CUDA)

        eager = kernels(lambda: stepper._step(x, y))  # the same kernels the graph replays
        replayed = kernels(lambda: stepper.step(x, y))
        return {"kernels_step": sum(eager.values()), "kernels_replayed_step": sum(replayed.values()),
                "top_kernels": [[k[:80], v] for k, v in eager.most_common(8)]}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper._step(x, y)
    # Compiled blocks' C++ kernels show as events of their own (see cpu_kernel_events), not aten ops.
    ops = collections.Counter(e.name for e in top_level(prof.events())
                              if e.name.startswith("aten::") or "cpp_fused" in e.name)
    real = sum(v for k, v in ops.items() if k not in VIEW_OPS)
    return {"kernels_step": real, "aten_ops_step": sum(ops.values()), "fused_adamw_calls": ops["aten::_fused_adamw_"],
            "top_ops": [[k, v] for k, v in ops.most_common() if k not in VIEW_OPS][:8]}


def cpu_kernel_events() -> None:
    """Make inductor's CPU kernels record profiler events, so the ops counted include them (set before compiling)."""
    import torch._inductor.config

    torch._inductor.config.cpp.enable_kernel_profile = True


def block_profile(device: torch.device, compile_blocks: bool) -> dict:
    """Kernels (CUDA) or aten ops (CPU) of one training block's forward and backward, eager vs compiled."""
    from torch.profiler import ProfilerActivity, profile

    from hgsearch.training import packed

    k, w, h, b = (8, 1024, 128, BATCH) if device.type == "cuda" else (4, 40, 8, 32)
    g = torch.Generator(device="cpu").manual_seed(0)
    z, down, up = (torch.randn(*s, generator=g).to(device).requires_grad_() for s in ((k, w, b), (k, h, w), (k, w, h)))
    stats = [t.to(device) for t in (torch.ones(k, 1, 1), torch.zeros(k, 1, w), torch.ones(k, 1, w),
                                    torch.full((k, 1, 1), 0.1))]
    grad = torch.ones(k, w, b, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"shape": [k, w, h, b]}
    fns = {"eager": packed.train_block}
    if compile_blocks and hasattr(packed, "compiled_block"):
        fns["compiled"] = packed.compiled_block()
    # On CUDA under the bf16 autocast the compiled packs run with, so their compilation is this one.
    def autocast() -> contextlib.AbstractContextManager:
        return (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda"
                else contextlib.nullcontext())

    for name, fn in fns.items():
        def run(fn=fn) -> None:
            with autocast():
                out = fn(z, down, up, *stats, b / (b - 1))
            torch.autograd.grad(out, (z, down, up), grad)

        t0 = time.perf_counter()
        run()  # compiles, for the compiled one
        sync(device)
        out[f"{name}_first_call_s"] = time.perf_counter() - t0
        with profile(activities=acts) as prof:
            run()
            sync(device)
        if device.type == "cuda":
            out[name] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
        else:  # compiled kernels on the CPU show as non-aten events; count every top-level op and kernel
            ops = [e.name for e in top_level(prof.events()) if e.name not in VIEW_OPS
                   and (e.name.startswith("aten::") or "cpp_fused" in e.name)]
            out[name] = len(ops)
    return out


def count_ops(args) -> int:
    """--count-ops: aten ops (no views) per step of each pack of the 5M samples, planned as on a GPU of
    that memory (packing.plan_packs, MAX_PACK, MEMORY_FRACTION of it free; and packing.plan_round, the
    round driver's plan), each pack rebuilt with the same members' K, depths, families, fixed W_in and
    learning rates at tiny widths, one eager step on the CPU. Per plan: ops per round (all packs, what
    runs one after another without the driver) and the longest pack's (the driver's critical path)."""
    import dataclasses

    from hgsearch.training.packing import (
        MAX_PACK,
        MEMORY_FRACTION,
        RoundModel,
        padding_waste,
        plan_packs,
        plan_round,
    )

    torch.set_num_threads(1)
    compile_blocks = bool(args.compile)
    if compile_blocks:
        cpu_kernel_events()
    result: dict = {"plan_gib": args.count_ops, "compile_blocks": compile_blocks}
    model = RoundModel(kernel_s=1e-6 * args.kernel_us if args.kernel_us else RoundModel.kernel_s,
                       compiled=compile_blocks)
    max_bytes = int(MEMORY_FRACTION * args.count_ops * 2**30)
    for tag, n, families in ((f"mixed{args.trials}", args.trials, ("hourglass", "conventional")),
                             (f"hourglass{args.trials_one}", args.trials_one, ("hourglass",))):
        specs = draw(n, args.budget, 196, 784, families)
        arch = [s for s, _ in specs]
        tiny = [(dataclasses.replace(s, d_in=16, d_out=64, width=8 if s.family == "hourglass" else 64,
                                     bottleneck=4 if s.family == "hourglass" else 72), lr) for s, lr in specs]
        for key, packs in ((tag, plan_packs(arch, MAX_PACK, max_bytes=max_bytes, batch_size=BATCH)),
                           (f"{tag}/round", plan_round(arch, MAX_PACK, max_bytes=max_bytes, batch_size=BATCH,
                                                       model=model))):
            steppers = make_steppers(tiny, packs, torch.device("cpu"), False, compile_blocks)
            x, y = torch.rand(BATCH, 16), torch.rand(BATCH, 64)
            rows = []
            for p, st in zip(packs, steppers, strict=True):
                for _ in range(2):
                    st.step(x, y)
                prof = step_profile(st, x, y, torch.device("cpu"))
                rows.append({"k": len(p), "depth": max(arch[i].depth for i in p), "ops": prof["kernels_step"],
                             "fused_adamw_calls": prof["fused_adamw_calls"]})
            result[key] = {"waste": padding_waste(arch, packs), "ops_per_round": sum(r["ops"] for r in rows),
                           "longest_pack_ops": max(r["ops"] for r in rows),
                           "modelled_round_s": model.round_time(arch, packs), "packs": rows}
            r = result[key]
            print(f"{tag}{' round plan' if key != tag else ''}: {len(packs)} packs (waste {r['waste']:.2f}), "
                  "ops per round (aten ops, no views; compiled kernels) "
                  f"{r['ops_per_round']:,}, longest pack {r['longest_pack_ops']:,}, modelled round "
                  f"{1e3 * r['modelled_round_s']:.3f} ms; per pack (K, depth, ops): "
                  + ", ".join(f"({q['k']}, {q['depth']}, {q['ops']})" for q in rows), flush=True)
    if args.json or os.environ.get("OUT"):
        path = args.json or Path(os.environ["OUT"]) / "gpu_ops.json"
        path.write_text(json.dumps(result, indent=1))
    return 0


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per second of a device-to-device tensor copy (read + write), CUDA events on a GPU."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps = 10
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        seconds = time.perf_counter() - t0
    return 2 * src.numel() * 4 * reps / seconds


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
    ap.add_argument("--trials", type=int, default=20, help="trials of the mixed-family sample")
    ap.add_argument("--trials-one", type=int, default=40, help="trials of the single-family (Hourglass) sample")
    ap.add_argument("--profile", action="store_true",
                    help="kernels per step of every pack (torch.profiler), kernels per block eager vs compiled")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time packs with compiled blocks (default: on CUDA; about 25 s of compiling "
                         "on 2 CPU cores)")
    ap.add_argument("--budget", type=int, default=5_000_000)
    ap.add_argument("--limit", type=float, default=420.0, help="seconds; the script stops itself shortly after")
    ap.add_argument("--naive-steps", type=int, default=150, help="timed steps per configuration, naive loop")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds of rounds (and of each pack alone)")
    ap.add_argument("--pack-size", type=int, default=None, help="override K (default: from device memory)")
    ap.add_argument("--plan", choices=("round", "serial", "both"), default="round",
                    help="packs of packing.plan_round (the round driver's), plan_packs's serial plan, or both timed")
    ap.add_argument("--kernel-us", type=float, default=None,
                    help="the round-time model's microseconds per kernel (default: packing.KERNEL_S)")
    ap.add_argument("--psnr-members", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="default: $OUT/gpu.json when $OUT is set")
    ap.add_argument("--count-ops", type=float, default=None, metavar="GIB",
                    help="only count, on the CPU, the aten ops per step of every pack of the real samples as a "
                         "device of GIB GiB would plan them (widths shrunk: the count does not depend on them)")
    args = ap.parse_args(argv)

    if args.count_ops is not None:
        return count_ops(args)
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
        torch.set_num_threads(1)  # tiny matmuls: a second thread only waits on a shared machine
        side, n_images, budget, trials, trials_one = 8, 768, 40_000, min(args.trials, 4), min(args.trials_one, 6)
        naive_steps, seconds, psnr_rows, mm, copy_bytes = 2, 0.05, 256, 256, 2**24
    else:
        side, n_images, budget, trials, trials_one = 28, 60_000, args.budget, args.trials, args.trials_one
        naive_steps, seconds, psnr_rows, mm, copy_bytes = args.naive_steps, args.seconds, 20_000, 8192, 2**30
    compile_blocks = args.compile if args.compile is not None else not cpu
    if compile_blocks and cpu:
        cpu_kernel_events()

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
    samples = {f"mixed{trials}": draw(trials, budget, d_in, d_out),
               f"hourglass{trials_one}": draw(trials_one, budget, d_in, d_out, ("hourglass",))}
    first = next(iter(samples))
    result["samples"] = {tag: {"data": label, "train_rows": len(data.train), "d_in": d_in, "d_out": d_out,
                               "budget": budget, "trials": len(specs),
                               "specs": [{**s.to_dict(), "params": s.params, "lr": lr} for s, lr in specs]}
                         for tag, specs in samples.items()}
    peak = section("peak", lambda: {} if cpu else {"bf16": matmul_peak(device, torch.bfloat16, mm, 0.5),
                                                   "tf32": tf32_peak(device, mm, 0.5)})
    copy = section("copy", lambda: {"bytes": copy_bytes, "bandwidth": copy_bandwidth(device, copy_bytes)})
    copy_bw = copy.get("bandwidth")
    if args.profile:
        section("block", lambda: block_profile(device, compile_blocks), min_left=60 if compile_blocks else 5)
    rest = lambda: args.limit - (time.perf_counter() - t0)  # noqa: E731
    kernel_s = args.kernel_us and 1e-6 * args.kernel_us
    plans = ("round", "serial") if args.plan == "both" else (args.plan,)
    for tag, sample in samples.items():
        # The naive loop gets a bounded share of the time left (unmeasured trials are extrapolated).
        naive_s = 0.5 if cpu else min(40.0, rest() / (3 * len(samples)))
        naive = section(f"{tag}/naive", lambda s=sample, b=naive_s: naive_section(s, data, device, naive_steps, b))
        runs = [section(f"{tag}/packs_{v[0]}" + ("_serialplan" if plan == "serial" else ""),
                        lambda s=sample, v=v, plan=plan: rounds_section(
                            s, data, device, v, seconds, args.pack_size, args.profile, copy_bw, kernel_s, plan))
                for plan in plans for v in variants(device, compile_blocks)]
        psnr = (section("psnr", lambda s=sample: psnr_section(s, data, device, args.psnr_members, psnr_rows),
                        min_left=20) if tag == first else None)
        print_table(result, naive, runs, peak, copy_bw, psnr, len(sample), d_in, d_out, budget, label, tag,
                    args.profile)
    print(f"\n{time.perf_counter() - t0:.0f} s" + (f"; JSON in {json_path}" if json_path else ""))
    return 0


def print_table(result, naive, runs, peak, copy_bw, psnr, trials, d_in, d_out, budget, label, tag, profile) -> None:
    m = result["machine"]
    print(f"\n## {tag}: {trials}-trial sample at budget {budget:,}, {d_in} -> {d_out} super-resolution, "
          f"batch {BATCH}, {m['device']}, torch {m['torch']}")
    print(f"data: {label}")
    if m["device"] == "cpu":
        print("CPU DRY RUN: tiny shapes and budget, a plumbing check; no number here is a GPU measurement")
    if peak and "bf16" in peak:
        print(f"measured matmul peak: bf16 {peak['bf16'] / 1e12:.0f} TFLOP/s, fp32 with TF32 "
              f"{peak['tf32'] / 1e12:.0f} TFLOP/s")
    if copy_bw:
        print(f"measured device copy bandwidth: {copy_bw / 1e9:,.1f} GB/s (read + write)")
    base = naive.get("samples_s")
    print("\n| path | samples/s | x naive | trials/GPU-hour | round ms | sum of packs ms | kernels/round "
          "| GB/s (model) | share of copy BW | MFU vs bf16 peak | MFU vs tf32 peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [("naive: DataLoader + AdamW, fp32, one trial at a time"
             + (f" ({naive['measured_trials']}/{naive['trials']} measured, rest extrapolated)"
                if naive.get("measured_trials", trials) < trials else ""), naive)]
    for r in runs:
        what = (f"hgsearch: {r['packs']} packs {r['sizes']} ({r['plan']}), waste {r['waste']:.2f}, "
                f"{'CUDA graphs' if r['graphs'] else 'eager'}, {r['variant']}"
                + (", compiled blocks" if r["compile_blocks"] else "")
                if "samples_s" in r else "hgsearch packs")
        rows.append((what, r))
    for what, r in rows:
        if "samples_s" not in r:
            print(f"| {what} | {r.get('error', '-')} | | | | | | | | | |")
            continue
        sps, fl = r["samples_s"], r["useful_flops"]
        mfu = [f"{fl / peak[k]:.1%}" if peak and k in peak else "-" for k in ("bf16", "tf32")]
        ratio = f"{sps / base:.1f}x" if base else "-"
        packs = "sum_of_pack_s" in r
        cells = [f"{1e3 * r['round_s']:.2f}", f"{1e3 * r['sum_of_pack_s']:.2f}" if packs else "-",
                 f"{r['kernels_per_round']:,}" if "kernels_per_round" in r else "-",
                 f"{r['bandwidth'] / 1e9:,.1f}" if packs else "-",
                 f"{r['bandwidth_share']:.1%}" if packs and r.get("bandwidth_share") else "-"]
        print(f"| {what} | {sps:,.0f} | {ratio} | {3600 * sps / (EPOCHS * IMAGES):,.1f} | {' | '.join(cells)} "
              f"| {mfu[0]} | {mfu[1]} |")
    print(f"\nsamples/s = {trials} trials x {BATCH} / (seconds of one round: every trial takes one batch; packs: "
          "every pack steps once, back to back, rounds timed whole); trials/GPU-hour = 3600 x samples/s / "
          f"({EPOCHS} epochs x {IMAGES:,} images), training steps only; GB/s (model) = {BYTES_PER_PARAM} bytes per "
          "padded parameter per step / round time; useful TFLOP/s = 6 x params x samples/s (padding not counted); "
          "MFU = useful / measured matmul peak.")
    for r in runs:
        for e in (r.get("capture_errors") or []) + (r.get("compile_errors") or []):
            print(f"  {r.get('variant')}: {e}")
    if profile:
        unit = "kernels" if m["device"] != "cpu" else "aten ops (no views)"
        for r in runs:
            if "per_pack" not in r:
                continue
            how = "eager step / replayed graph" if r["graphs"] else "eager"
            if "modelled_round_s" in r:
                sp = r["serial_plan"]
                print(f"\n{r['variant']}: timed plan {r['plan']} ({1e6 * r['kernel_s']:.1f} us per kernel, "
                      f"{r['model_bandwidth'] / 1e9:,.0f} GB/s): {r['packs']} packs {r['sizes']}, "
                      f"waste {r['waste']:.2f}, "
                      f"modelled round {1e3 * r['modelled_round_s']:.3f} ms, measured {1e3 * r['round_s']:.3f} ms; "
                      f"serial plan (plan_packs): {sp['packs']} packs {sp['sizes']}, waste {sp['waste']:.2f}, "
                      f"modelled round {1e3 * sp['modelled_round_s']:.3f} ms")
            print(f"\n{r['variant']}: per pack, {unit} per step ({how}) and time per step alone")
            print("| pack | K | width/bottleneck/depth (padded) | padded params | step ms alone | "
                  f"{unit}/step | top |")
            print("|---|---|---|---|---|---|---|")
            for i, q in enumerate(r["per_pack"]):
                count = (f"{q['kernels_step']:,} / {q['kernels_replayed_step']:,}" if "kernels_replayed_step" in q
                         else f"{q.get('kernels_step', '-')}")
                top = ", ".join(f"{name.removeprefix('aten::')} {v}" for name, v in
                                (q.get("top_kernels") or q.get("top_ops") or [])[:4])
                print(f"| {i} | {q['k']} | {q['width']}/{q['bottleneck']}/{q['depth']} | {q['padded_params']:,} "
                      f"| {1e3 * q['step_s']:.2f} | {count} | {top} |")
        block = result.get("block", {})
        if "eager" in block:
            compiled = (f", compiled {block['compiled']} (first call {block['compiled_first_call_s']:.1f} s)"
                        if "compiled" in block else "")
            print(f"\n{unit} per block, forward + backward, shape K/width/bottleneck/batch {block['shape']}: "
                  f"eager {block['eager']}{compiled}")
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
    elif psnr is not None:
        print(f"PSNR agreement: {psnr.get('error') if isinstance(psnr, dict) else '-'}")
    best = max((r["samples_s"] for r in runs if "samples_s" in r), default=None)
    goal = 30 if tag.startswith("mixed") else 40
    share = max((r["bandwidth_share"] for r in runs if r.get("bandwidth_share")), default=None)
    if base and best:
        x = best / base
        met = "MET" if x >= goal else "NOT MET"
        print(f"target: >= {goal}x the naive loop's trials per GPU-hour: {x:.1f}x -> {met}")
    else:
        print(f"target: >= {goal}x the naive loop's trials per GPU-hour: not measured (a section failed)")
    if share is not None:
        print(f"target: >= 25% of the measured copy bandwidth: {share:.1%} -> {'MET' if share >= 0.25 else 'NOT MET'}")


if __name__ == "__main__":
    sys.exit(main())
