"""bench/gpu.py, the GPU check anyone runs first: its CPU dry run prints the comparison, and without CUDA it says so."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the no-CUDA path is tested on a GPU machine too.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_cpu_dry_run_prints_the_side_by_side_table():
    r = _run("--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "CPU DRY RUN" in out
    assert "| path | samples/s | x naive | trials/GPU-hour |" in out
    naive = [line for line in out.splitlines() if line.startswith("| naive: DataLoader")]
    packs = [line for line in out.splitlines() if line.startswith("| hgsearch:")]
    assert len(naive) == 1 and len(packs) == 1, out
    assert float(packs[0].split("|")[2].replace(",", "")) > 0
    # Packed and naive training agree exactly on the CPU (float32, same order, seed and weights).
    assert "max |dPSNR| fp32" in out and "target <= 0.05 dB: MET" in out, out
    assert "target: >= 30x the naive loop's trials per GPU-hour:" in out


def test_without_cuda_it_says_so_and_exits_0():
    r = _run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("no CUDA device"), r.stdout
    assert "|" not in r.stdout
