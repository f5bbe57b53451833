"""bench/gpu.py, the GPU check anyone runs first: its CPU dry run prints the comparison, and without CUDA it says so."""

from __future__ import annotations

import json
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


def test_cpu_dry_run_prints_the_side_by_side_table_and_the_profile(tmp_path):
    r = _run("--device", "cpu", "--profile", "--json", str(tmp_path / "gpu.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "CPU DRY RUN" in out
    assert "| path | samples/s | x naive | trials/GPU-hour | round ms | sum of packs ms | kernels/round |" in out
    naive = [line for line in out.splitlines() if line.startswith("| naive: DataLoader")]
    packs = [line for line in out.splitlines() if line.startswith("| hgsearch:")]
    assert len(naive) == 2 and len(packs) == 2, out  # the mixed sample and the single-family one
    assert all(float(line.split("|")[2].replace(",", "")) > 0 for line in packs)
    # Packed and naive training agree exactly on the CPU (float32, same order, seed and weights).
    assert "max |dPSNR| fp32" in out and "target <= 0.05 dB: MET" in out, out
    assert "target: >= 30x the naive loop's trials per GPU-hour:" in out
    assert "target: >= 40x the naive loop's trials per GPU-hour:" in out
    assert "target: >= 25% of the measured copy bandwidth:" in out
    assert "aten ops (no views) per block, forward + backward" in out
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert set(result["samples"]) == {"mixed4", "hourglass6"}
    assert result["copy"]["bandwidth"] > 0 and result["block"]["eager"] > 0
    for tag in result["samples"]:
        run = result[f"{tag}/packs_fp32"]
        assert "error" not in run, run
        assert run["round_s"] > 0 and 0 < run["bandwidth_share"] < 1
        assert sum(run["sizes"]) == result["samples"][tag]["trials"]
        assert len(run["per_pack"]) == run["packs"]
        for pack in run["per_pack"]:
            # One fused AdamW call per member; the step's ops are counted, never zero.
            assert pack["fused_adamw_calls"] == pack["k"] and pack["kernels_step"] > 0 and pack["step_s"] > 0
        assert run["kernels_per_round"] == sum(p["kernels_step"] for p in run["per_pack"])


def test_without_cuda_it_says_so_and_exits_0():
    r = _run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("no CUDA device"), r.stdout
    assert "|" not in r.stdout


def test_count_ops_plans_the_real_samples_and_counts_each_pack_s_step(tmp_path):
    r = _run("--count-ops", "139", "--json", str(tmp_path / "ops.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "ops.json").read_text())
    for tag, trials in (("mixed20", 20), ("hourglass40", 40)):
        packs = result[tag]["packs"]
        assert sum(p["k"] for p in packs) == trials and result[tag]["ops_per_round"] == sum(p["ops"] for p in packs)
        assert all(p["fused_adamw_calls"] == p["k"] for p in packs)
        # Deeper packs dispatch more ops: the count follows the structure, not the shrunk widths.
        deepest = max(packs, key=lambda p: p["depth"])
        assert deepest["ops"] == max(p["ops"] for p in packs)
        assert f"{tag}: {len(packs)} packs" in r.stdout
