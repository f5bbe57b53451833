"""The round driver against one pack after another: same packs, same results, wall time of each (issue 21).

    PYTHONPATH=$PWD python bench/round_driver.py --device cpu     # 2 CPU cores: about a minute
    PYTHONPATH=$PWD python bench/round_driver.py                  # CUDA: streams and graphs, the driver's case

A round of heterogeneous packs (one deep pack of two narrow models, shallow wide ones: issue 21's shape) on
synthetic super-resolution images, trained twice: each pack to its end with train_packed, one after another
(the PackExecutor before the driver), and all packs through training.rounds.drive (interleaved, deepest
first, one CUDA stream each). Prints both wall times and the largest difference of any member's
validation PSNR (0 expected: each pack keeps its own data order). Epoch-end evaluation and checkpoints are
left out: this times training steps and the final evaluation only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from hgsearch.data.registry import Dataset, ImageSet
    from hgsearch.data.tasks import prepare
    from hgsearch.model.families import ArchSpec
    from hgsearch.training.packed import PackRun, train_packed
    from hgsearch.training.rounds import drive

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--images", type=int, default=None, help="training images (default: 1280 CPU, 50000 CUDA)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--side", type=int, default=None, help="image side (default: 12 CPU, 28 CUDA)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpu = device.type == "cpu"
    if cpu:
        torch.set_num_threads(1)
    side = args.side or (12 if cpu else 28)
    n = args.images or (1280 if cpu else 50_000)
    rng = np.random.default_rng(0)
    images = lambda m: ImageSet(rng.integers(0, 256, (m, 1, side, side), dtype=np.uint8),  # noqa: E731
                                rng.integers(0, 10, m).astype(np.int64))
    data = prepare(Dataset("synthetic", images(n), images(max(n // 6, 64)), "", "memory"), "superres",
                   val_size=max(n // 10, 64), device=device)
    d_in, d_out, d_x = data.d_in, data.d_out, max(data.d_in, data.d_out)
    scale = 1 if cpu else 4  # wider on a GPU, so the wide packs carry real traffic
    packs = [  # (specs, lrs): the deep narrow pair, then shallow wide packs
        ([ArchSpec("hourglass", d_in, d_out, d_x + 1, 2, 44), ArchSpec("hourglass", d_in, d_out, d_x + 3, 3, 41)],
         [1e-3, 2e-3]),
        ([ArchSpec("conventional", d_in, d_out, d_x, scale * 4 * d_x, 2),
          ArchSpec("conventional", d_in, d_out, d_x, scale * 3 * d_x, 1)], [1e-3, 3e-3]),
        ([ArchSpec("hourglass", d_in, d_out, scale * 2 * d_x, 16, 3), ArchSpec("hourglass", d_in, d_out, 2 * d_x, 8, 3),
          ArchSpec("hourglass", d_in, d_out, scale * d_x + 40, 32, 2)], [2e-3, 1e-3, 4e-3]),
    ]
    kw = dict(data=data, epochs=args.epochs, batch_size=128, seed=0, device=device)

    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize(device)

    # A warm-up pack, so neither timing pays the first-use costs (allocator, cuBLAS, graph pools).
    train_packed(packs[1][0], lrs=packs[1][1], **{**kw, "epochs": 1})
    sync()
    t0 = time.perf_counter()
    alone = [train_packed(specs, lrs=lrs, **kw)[1] for specs, lrs in packs]
    sync()
    sequential_s = time.perf_counter() - t0
    got: dict[int, list] = {}
    t0 = time.perf_counter()
    drive([lambda stream, p=p: PackRun(p[0], lrs=p[1], stream=stream, **kw) for p in packs],
          [max(s.depth for s in p[0]) for p in packs], device, finished=got.__setitem__,
          failed=lambda j, e: print(f"pack {j} failed: {e}"))
    sync()
    driven_s = time.perf_counter() - t0
    diff = max(abs(a.psnr_val - b.psnr_val) for j in range(len(packs)) for a, b in zip(got[j], alone[j], strict=True))
    steps = args.epochs * -(-len(data.train) // 128)
    out = {"device": torch.cuda.get_device_name(device) if not cpu else "cpu", "torch": torch.__version__,
           "packs": [[len(p[0]), max(s.depth for s in p[0])] for p in packs], "steps_per_pack": steps,
           "sequential_s": sequential_s, "driven_s": driven_s, "max_abs_dpsnr_val": diff}
    print(f"{out['device']}: {len(packs)} packs (K, depth) {out['packs']}, {steps} steps each; one pack after another "
          f"{sequential_s:.2f} s, round driver {driven_s:.2f} s ({sequential_s / driven_s:.2f}x); "
          f"max |dPSNR val| {diff:.1e} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
