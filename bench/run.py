"""Naive Optuna-example training loop vs hgsearch's training path, side by side in one run (issue 5).

    .venv/bin/python bench/run.py            # the documented protocol, a few minutes on 2 CPU cores
    .venv/bin/python bench/run.py --quick    # smoke test: tiny models, tiny subsets, one round

Per configuration and round, in alternating order (the machine is shared: interleaving is what makes
the ratios fair), it runs one trial of each path on the same data, seed and epochs:
  naive   the loop of Optuna's PyTorch example: a DataLoader over a float32 TensorDataset (shuffled in
          hgsearch's order, so both see the same batches), `.to(device)` each step,
          AdamW with PyTorch's default kernel, LambdaLR linear decay, evaluation per batch of 128 with
          one `.item()` each; one process with all threads
  ours    hgsearch.training.loop.train() on hgsearch.data.tasks data (uint8 on the device, fused AdamW, batched
          evaluation); one process with all threads
  ours xW the same in W concurrent worker processes of 1 thread each (what `hgsearch run --workers W`
          does on a CPU), both workers training the configuration at once
  packed  hgsearch.training.packed: --pack learning rates of the configuration as one batched computation in
          one process (the GPU path for many small trials; measured here for what it does on a CPU)
and checks that every path reaches the same validation and test PSNR within 0.05 dB.

FLOPs: training counts 6 * params per sample (forward 2, backward 4), evaluation 2 * params per sample:
the usual estimate (it overcounts W_in's backward, which needs no input gradient, by 2 * d_in * width).
Peak: the best fp32 rate of a 2048x2048 matmul on all threads, measured here at the start and the end.

trials/hour is for a fixed protocol, the cheapest real trial: 1 epoch over the full 50,000-image
training split at batch 128, evaluation of the full 10,000-image validation and test splits, and one
Optuna SQLite write (ask, 12 user attributes, tell). Training steps are timed on a subset (--train)
and scaled to 50,000 samples, evaluation on --eval images and scaled to 10,000 + 10,000; start-up
and the storage write are timed as they are.
Loading the dataset is once per process (per worker), reported apart.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import Split, TaskData, as_float, prepare
from hgsearch.model.families import ArchSpec, build
from hgsearch.training.loop import make_optimizer, train
from hgsearch.training.packed import train_packed

PSNR_TOL = 0.05  # dB: naive and hgsearch paths must agree this closely (same seed, same epochs)
FULL_EPOCH = 50_000  # training images in one epoch of the fixed trials/hour protocol
BATCH = 128
SEED = 0
LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    task: str  # superres (196 -> 784) or classify (784 -> 784) on 28x28 images
    family: str
    width: int
    bottleneck: int
    depth: int

    def spec(self, d_in: int, d_out: int) -> ArchSpec:
        return ArchSpec(self.family, d_in, d_out, self.width, self.bottleneck, self.depth)


# ~1M and ~5M for both families at the paper's batch 128. The conventional stream is the image
# size (784), so its smallest model is 2.0M on superres 196->784 (784, 785, 1) and 2.46M on 784->784:
# no conventional 1M model exists, its small point is that 2.0M one.
CONFIGS = (
    Config("hourglass 1.1M (785,115,2) superres", "superres", "hourglass", 785, 115, 2),
    Config("conventional 2.0M (784,785,1) superres", "superres", "conventional", 784, 785, 1),
    Config("hourglass 5.8M (1024,128,16) classify", "classify", "hourglass", 1024, 128, 16),
    Config("conventional 4.9M (784,785,3) classify", "classify", "conventional", 784, 785, 3),
)


def quick_configs(d_x: int) -> tuple[Config, ...]:
    return (Config("hourglass tiny superres", "superres", "hourglass", d_x + 16, 16, 2),
            Config("conventional tiny classify", "classify", "conventional", d_x, d_x + 16, 1))


# ------------------------------------------------------------------------------------- the paths
def psnr_naive(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """The paper's PSNR written the obvious way: a DataLoader, one .item() per batch of 128."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for xb, yb in loader:
            mse = F.mse_loss(model(xb.to(device)), yb.to(device)).item()
            total += xb.shape[0] * 10 * math.log10(1 / max(mse, 1e-20))
    return total / len(x)


class SameOrder(torch.utils.data.Sampler):
    """shuffle=True with hgsearch's order: one randperm per epoch from a generator seeded like train()'s.

    (shuffle=True with a seeded generator differs: the DataLoader draws a worker seed from the
    generator first, and the sampler an extra permutation per epoch.) With the same batches, the two
    paths differ only by float rounding, so the PSNR check is tight.
    """

    def __init__(self, n: int) -> None:
        self.n, self.gen = n, torch.Generator().manual_seed(SEED)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.gen).tolist())


def naive_trial(spec: ArchSpec, cpu: dict[str, torch.Tensor], epochs: int, device: torch.device) -> dict:
    """Optuna's PyTorch example, with the paper's optimizer, schedule and metric."""
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    model = build(spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.01)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cpu["train_x"], cpu["train_y"]),
                                         batch_size=BATCH, sampler=SameOrder(len(cpu["train_x"])))
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    t1 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
    loss.item()  # a GPU finishes its queue here
    t2 = time.perf_counter()
    val = psnr_naive(model, cpu["val_x"], cpu["val_y"], device)
    test = psnr_naive(model, cpu["test_x"], cpu["test_y"], device)
    t3 = time.perf_counter()
    return {"startup_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2, "samples": epochs * len(cpu["train_x"]),
            "psnr_val": val, "psnr_test": test}


def ours_trial(spec: ArchSpec, data: TaskData, epochs: int, device: torch.device) -> dict:
    """hgsearch.training.loop.train(), exactly as a search trial calls it; the epoch-end hook splits the time."""
    marks: list[float] = []
    t0 = time.perf_counter()
    _, res = train(spec, data, lr=LR, epochs=epochs, batch_size=BATCH, seed=SEED, device=device,
                   on_epoch_end=lambda state: marks.append(time.perf_counter()))
    t2 = time.perf_counter()
    t_start = time.perf_counter()  # train()'s start-up (seed, build, optimizer), repeated to time it
    torch.manual_seed(SEED)
    make_optimizer(list(build(spec).to(device).parameters()), LR, 0.01, device)
    startup = time.perf_counter() - t_start
    return {"startup_s": startup, "train_s": marks[-1] - t0 - startup, "eval_s": t2 - marks[-1],
            "samples": epochs * len(data.train), "psnr_val": res.psnr_val, "psnr_test": res.psnr_test}


# --------------------------------------------------------------------------------- data and peak
def load(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, TaskData], float]:
    """Both tasks' splits (training subset of args.train images, full or --eval-sized val/test)."""
    t0 = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir)
    out = {}
    for task in ("superres", "classify"):
        d = prepare(dataset, task, val_size=args.val_size, device=device)
        cut = lambda s, n: Split(s.inputs[:n], s.targets[:n])  # noqa: E731
        out[task] = dataclasses.replace(d, train=cut(d.train, args.train), val=cut(d.val, args.eval),
                                        test=cut(d.test, args.eval))
    return out, time.perf_counter() - t0


def as_cpu_floats(data: TaskData) -> dict[str, torch.Tensor]:
    """What the naive loop starts from: float32 tensors on the CPU (as after torchvision's ToTensor)."""
    return {f"{name}_{k}": as_float(getattr(getattr(data, name), attr)).cpu().contiguous()
            for name in ("train", "val", "test") for k, attr in (("x", "inputs"), ("y", "targets"))}


def matmul_peak(device: torch.device, seconds: float = 0.4, n: int = 2048) -> float:
    """Best fp32 FLOP/s of an n x n matmul over 5 windows: the machine's practical peak right now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = 0.0
    for _ in range(5):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    return best


def storage_write_seconds(repeats: int = 5) -> float:
    """Median time of one real trial record in an Optuna SQLite study: ask, 12 user attributes, tell."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{tmp}/bench.db", directions=["minimize", "maximize"])
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            trial = study.ask()
            for k in ("family", "d_in", "d_out", "width", "bottleneck", "depth", "params", "lr", "seed",
                      "psnr_val", "psnr_test", "seconds"):
                trial.set_user_attr(k, i)
            study.tell(trial, [float(i), 20.0 + i])
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])  # the first includes SQLAlchemy's warm-up


# ------------------------------------------------------------------------------ worker processes
_WORKER: dict = {}


def _worker_init(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # what `hgsearch run --workers` gives each of W workers on W cores
    _WORKER["data"], _WORKER["load_s"] = load(args, torch.device("cpu"))


def packed_trial(spec: ArchSpec, data: TaskData, epochs: int, device: torch.device, k: int) -> dict:
    """k learning rates of one configuration as one packed computation (hgsearch.training.packed); slot 0 is LR."""
    lrs = [LR * 2.0 ** (i // 2 if i % 2 else -(i // 2)) for i in range(k)]  # LR, LR*2, LR/2, LR*4, ...
    t0 = time.perf_counter()
    _, res = train_packed([spec] * k, data, lrs=lrs, epochs=epochs, batch_size=BATCH, seed=SEED, device=device)
    wall = time.perf_counter() - t0
    # Not split by hooks: the whole pack (start-up + steps + evaluation) counts as training time,
    # which understates its samples/s slightly.
    return {"startup_s": 0.0, "train_s": wall, "eval_s": 0.0, "samples": k * epochs * len(data.train),
            "psnr_val": res[0].psnr_val, "psnr_test": res[0].psnr_test, "k": k}


def _worker_ready(seconds: float) -> int:
    time.sleep(seconds)  # long enough that the executor starts every worker (and loads its data)
    warm_up(_WORKER["data"], torch.device("cpu"))
    return os.getpid()


def warm_up(data: dict[str, TaskData], device: torch.device) -> None:
    """One untimed tiny trial of each path: lazy initialisation is not charged to the first config."""
    d = data["classify"]
    spec = quick_configs(max(d.d_in, d.d_out))[1].spec(d.d_in, d.d_out)
    small = dataclasses.replace(d, train=Split(d.train.inputs[:BATCH], d.train.targets[:BATCH]),
                                val=Split(d.val.inputs[:BATCH], d.val.targets[:BATCH]),
                                test=Split(d.test.inputs[:BATCH], d.test.targets[:BATCH]))
    naive_trial(spec, as_cpu_floats(small), 1, device)
    ours_trial(spec, small, 1, device)


def _worker_trial(cfg: Config, epochs: int) -> dict:
    data = _WORKER["data"][cfg.task]
    start = time.time()
    r = ours_trial(cfg.spec(data.d_in, data.d_out), data, epochs, torch.device("cpu"))
    return {**r, "start": start, "end": time.time(), "load_s": _WORKER["load_s"]}


# ---------------------------------------------------------------------------------------- report
FULL_EVAL = 10_000  # validation and test images each in the fixed protocol


def fixed_trial_seconds(r: dict, storage_s: float, eval_images: int) -> float:
    """Seconds of one trial of the fixed protocol (1 full epoch, full evaluation), from the measured parts."""
    return r["startup_s"] + FULL_EPOCH / r["sps"] + r["eval_s"] * FULL_EVAL / eval_images + storage_s


def summarize(runs: list[dict], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in runs]
    return statistics.median(vals), min(vals), max(vals)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny models and subsets, one round")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions per configuration")
    ap.add_argument("--train", type=int, default=12_800, help="training images per trial (a subset)")
    ap.add_argument("--eval", type=int, default=10_000, help="validation and test images evaluated")
    ap.add_argument("--val-size", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--only", type=int, nargs="+", default=list(range(len(CONFIGS))),
                    help="indices into CONFIGS to run (0 hg 1.1M, 1 conv 2.0M, 2 hg 5.8M, 3 conv 4.9M)")
    ap.add_argument("--pack", type=int, default=2, help="models per packed computation in the 'packed' path (0 skips)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="concurrent 1-thread worker processes for the 'ours xW' path (CPU only; 0 skips)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.train, args.eval, args.val_size = 1, 512, 256, 256
        args.workers = min(args.workers, 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    if device.type == "cuda":
        args.workers = 0  # worker processes are the CPU's answer; on a GPU see hgsearch.training.packed

    load_start = os.getloadavg()
    data, load_s = load(args, device)
    d_x = max(data["classify"].d_in, data["classify"].d_out)
    configs = quick_configs(d_x) if args.quick else tuple(c for i, c in enumerate(CONFIGS) if i in args.only)
    cpu_floats = {t: as_cpu_floats(d) for t, d in data.items()}
    warm_up(data, device)
    peak0 = matmul_peak(device)
    storage_s = storage_write_seconds()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.node()}  {cpu_name()}  torch {torch.__version__}"
          f"  threads {torch.get_num_threads()}  load avg {load_start[0]:.2f}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"protocol: {args.dataset}, train subset {args.train}, eval {args.eval}+{args.eval}, "
          f"epochs {args.epochs}, batch {BATCH}, lr {LR}, seed {SEED}, rounds {args.rounds}, workers {args.workers}")
    print(f"dataset load + task prep (per process): {load_s:.2f} s; Optuna SQLite write: {storage_s * 1e3:.1f} ms")

    pool = None
    if args.workers:
        pool = cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"),
                                      initializer=_worker_init, initargs=(args,))
        pids = set(pool.map(_worker_ready, [0.5] * args.workers))  # W tasks at once start W workers
        assert len(pids) == args.workers, "worker processes did not all start"
    results: dict[str, dict[str, list[dict]]] = {c.name: {"naive": [], "ours": [], "workers": [], "packed": []}
                                                 for c in configs}
    failures = []
    for rnd in range(args.rounds):
        for cfg in configs:
            d = data[cfg.task]
            spec = cfg.spec(d.d_in, d.d_out)
            order = ["naive", "ours", "workers", "packed"]
            order = order if rnd % 2 == 0 else order[::-1]
            for path in order:
                if path == "naive":
                    r = naive_trial(spec, cpu_floats[cfg.task], args.epochs, device)
                elif path == "ours":
                    r = ours_trial(spec, d, args.epochs, device)
                elif path == "packed":
                    if not args.pack:
                        continue
                    r = packed_trial(spec, d, args.epochs, device, args.pack)
                elif pool is not None:
                    rs = list(pool.map(_worker_trial, [cfg] * args.workers, [args.epochs] * args.workers))
                    r = {k: statistics.mean(x[k] for x in rs) for k in ("startup_s", "train_s", "eval_s", "load_s")}
                    r.update(samples=rs[0]["samples"], psnr_val=rs[0]["psnr_val"], psnr_test=rs[0]["psnr_test"],
                             overlap=min(x["end"] for x in rs) - max(x["start"] for x in rs),
                             wall=max(x["end"] for x in rs) - min(x["start"] for x in rs))
                    for x in rs[1:]:
                        if abs(x["psnr_val"] - r["psnr_val"]) > 1e-9:
                            failures.append(f"{cfg.name}: workers disagree with each other")
                else:
                    continue
                r["sps"] = r["samples"] / r["train_s"]
                print(f"  round {rnd + 1} {cfg.name} {path}: {r['sps']:.0f} samples/s, PSNR val {r['psnr_val']:.3f}, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
                results[cfg.name][path].append(r)
            base = results[cfg.name]["naive"][-1]
            for path in ("ours", "workers", "packed"):
                if results[cfg.name][path] and len(results[cfg.name][path]) == rnd + 1:
                    o = results[cfg.name][path][-1]
                    for split in ("psnr_val", "psnr_test"):
                        if abs(o[split] - base[split]) > PSNR_TOL:
                            failures.append(f"{cfg.name} round {rnd}: {path} {split} {o[split]:.3f} vs naive "
                                            f"{base[split]:.3f}")
    if pool is not None:
        pool.shutdown()
    peak1 = matmul_peak(device)
    peak = max(peak0, peak1)
    load_end = os.getloadavg()
    report(results, configs, data, peak, peak0, peak1, storage_s, args)
    print(f"\nload average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end (2 cores; >2 means shared)")
    if failures:
        print("\nPSNR CHECK FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nPSNR check: every path within {PSNR_TOL} dB of the naive loop on validation and test, every round")
    return 0


def report(results: dict, configs: tuple[Config, ...], data: dict[str, TaskData], peak: float, peak0: float,
           peak1: float, storage_s: float, args: argparse.Namespace) -> None:
    print(f"fp32 matmul peak (2048^2, {torch.get_num_threads()} threads): {peak0 / 1e9:.0f} GFLOP/s at start, "
          f"{peak1 / 1e9:.0f} at end; fractions below use the higher, {peak / 1e9:.0f} GFLOP/s")
    w = args.workers
    print("\nmedian [min-max] over rounds; sps = training samples/s (for 'ours xW': all workers together)")
    print("| config | path | train sps | train GFLOP/s | % of peak | start-up s | eval s (val+test) "
          "| PSNR val | trial s (1 epoch) | overhead % | trials/hour |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for cfg in configs:
        d = data[cfg.task]
        params = cfg.spec(d.d_in, d.d_out).params
        row = {}
        for path in ("naive", "ours", "workers", "packed"):
            runs = results[cfg.name][path]
            if not runs:
                continue
            k = w if path == "workers" else 1  # workers run concurrently: throughput adds up
            sps = [r["sps"] * k for r in runs]
            trial_s = [fixed_trial_seconds(r, storage_s, args.eval) for r in runs]
            tph = [3600 * k / t for t in trial_s]
            over = [100 * (r["startup_s"] + r["eval_s"] * FULL_EVAL / args.eval + storage_s) / t
                    for r, t in zip(runs, trial_s, strict=True)]
            med = statistics.median
            row[path] = {"sps": med(sps), "tph": med(tph), "psnr": med(r["psnr_val"] for r in runs)}
            label = {"naive": "naive", "ours": "ours", "workers": f"ours x{w} procs",
                     "packed": f"packed x{args.pack} (1 proc)"}[path]
            print(f"| {cfg.name} ({params / 1e6:.2f}M) | {label} | {med(sps):.0f} [{min(sps):.0f}-{max(sps):.0f}] "
                  f"| {6 * params * med(sps) / 1e9:.0f} | {100 * 6 * params * med(sps) / peak:.0f} "
                  f"| {med(r['startup_s'] for r in runs):.3f} | {med(r['eval_s'] for r in runs):.2f} "
                  f"| {row[path]['psnr']:.3f} | {med(trial_s):.1f} | {med(over):.1f} "
                  f"| {med(tph):.0f} [{min(tph):.0f}-{max(tph):.0f}] |")
        ratios.append((cfg.name, row))
    print("\nratios vs naive (medians): training samples/s, trials/hour of the fixed protocol, "
          "PSNR val difference (dB)")
    for name, row in ratios:
        parts = []
        for path in ("ours", "workers", "packed"):
            if path in row:
                label = {"ours": "ours", "workers": f"ours x{w}", "packed": f"packed x{args.pack}"}[path]
                parts.append(f"{label}: sps {row[path]['sps'] / row['naive']['sps']:.2f}x, trials/h "
                             f"{row[path]['tph'] / row['naive']['tph']:.2f}x, dPSNR "
                             f"{row[path]['psnr'] - row['naive']['psnr']:+.4f}")
        print(f"- {name}: " + "; ".join(parts))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
