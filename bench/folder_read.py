"""Reading an image folder of N images (--dataset folder): first read (decode + cache) and cached read, time and memory.

    .venv/bin/python bench/folder_read.py --make DIR --n 100000      # write N 32x32 RGB PNGs in 10 classes
    .venv/bin/python bench/folder_read.py DIR                          # one read in a fresh process

Each read runs in its own process (the in-process cache would hide the second); the peak resident memory
is that process's ru_maxrss. XDG_CACHE_HOME decides where the decoded cache goes.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make(root: Path, n: int, side: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        split = "test" if i % 6 == 0 else "train"  # one in six for test
        d = root / split / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        c = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 0.02)
        rgb = np.stack([blob, blob[:, ::-1], 1 - blob], -1) + rng.uniform(0, 0.2, (side, side, 3))
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(d / f"{i:06d}.png")


def read_once(root: Path) -> None:
    from hgsearch.data.registry import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset("folder", root)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    arrays = (ds.train.images.nbytes + ds.test.images.nbytes) / 2**20
    print(f"{len(ds.train.images):,} + {len(ds.test.images):,} images {ds.shape}: {seconds:.1f} s, "
          f"arrays {arrays:.0f} MiB, peak RSS {rss:.2f} GiB, checksum {ds.checksum[:12]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--make", action="store_true")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make:
        t0 = time.perf_counter()
        make(a.root, a.n)
        print(f"wrote {a.n:,} PNGs in {time.perf_counter() - t0:.0f} s")
    elif a.in_process:
        read_once(a.root)
    else:
        for what in ("first read (decode, write the cache)", "second read (the cache)"):
            print(what, end=": ", flush=True)
            subprocess.run([sys.executable, __file__, str(a.root), "--in-process"], check=True)


if __name__ == "__main__":
    main()
