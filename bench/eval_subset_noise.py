"""How well a fixed validation subset stands in for the full split in per-epoch evaluation, and its cost.

Reads the curves CSV of bench/curves_record.py (full-split PSNR and PSNR on the first 1024/2048/5120
validation rows after every epoch of every configuration, each timed) and prints per subset size:
the offset from the full-split PSNR (mean, and its spread across models at the same epoch, which is
what can reorder two trials), how often two trials of a family at the same epoch are ordered
differently than on the full split (all pairs, and pairs more than 0.1 dB apart on the full split),
and the evaluation time as a fraction of a training epoch (epochs 2+, the first one includes start-up).

    .venv/bin/python bench/eval_subset_noise.py bench/curves-fmnist.csv
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--full-train", type=int, default=50_000, help="training images of a full epoch")
    ap.add_argument("--train-size", type=int, default=10_000, help="training images the CSV's epochs used")
    args = ap.parse_args()
    df = pd.read_csv(args.csv, comment="#")
    sizes = sorted(int(c.rsplit("_", 1)[1]) for c in df.columns if c.startswith("psnr_val_"))
    later = df[df["epoch"] >= 2]
    epoch_s = later["epoch_seconds"].median()
    # Gaps a promotion decides on: |PSNR difference| of two trials of a family at the same epoch.
    gaps = [abs(a - b) for _, g in df.groupby(["family", "epoch"]) for a, b in itertools.combinations(g["psnr_val"], 2)]
    print(f"# {args.csv}: {df[['family', 'config']].drop_duplicates().shape[0]} configurations, "
          f"{len(df)} epoch evaluations; median training epoch {epoch_s:.2f} s ({args.train_size} images)")
    print(f"# same-epoch, same-family PSNR gaps on the full split: median {np.median(gaps):.3f} dB, "
          f"10th percentile {np.percentile(gaps, 10):.3f} dB, {len(gaps)} pairs")
    print("| eval images | offset mean dB | offset std, same epoch dB | max abs offset dev dB | pairs reordered "
          "| pairs > 0.1 dB apart reordered | eval s | % of a 10k epoch | % of a full epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [*sizes, None]:
        col = f"psnr_val_{n}" if n else "psnr_val"
        secs = later[f"eval_seconds_{n}" if n else "eval_seconds"].median()
        diff = df[col] - df["psnr_val"]
        dev = diff - diff.groupby([df["family"], df["epoch"]]).transform("mean")
        flips = wide = wide_flips = 0
        for _, g in df.groupby(["family", "epoch"]):
            for (fa, sa), (fb, sb) in itertools.combinations(zip(g["psnr_val"], g[col], strict=True), 2):
                flip = (fa - fb) * (sa - sb) < 0
                flips += flip
                if abs(fa - fb) > 0.1:
                    wide += 1
                    wide_flips += flip
        full_epoch = epoch_s * args.full_train / args.train_size
        print(f"| {n or 'all'} | {diff.mean():+.3f} | {dev.std():.3f} | {dev.abs().max():.3f} "
              f"| {flips}/{len(gaps)} | {wide_flips}/{wide} | {secs:.3f} | {secs / epoch_s:.0%} "
              f"| {secs / full_epoch:.1%} |")


if __name__ == "__main__":
    main()
