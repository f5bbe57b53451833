"""bench/curves_table.py: the GPU learning-curve recorder runs on the CPU and records what loop.train trains."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from hgsearch.data.tasks import Split, prepare
from hgsearch.model.families import ArchSpec
from hgsearch.training.loop import train
from hgsearch.training.packed import PackedMLP, evaluate_packed
from tests.conftest import REPO, dataset, load_bench


@pytest.mark.slow
def test_quick_table_matches_train(tmp_path):
    """--quick: 6 configurations x 3 epochs, header comments, and each last epoch equals loop.train's result."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "curves_table.py"), "--quick", "--out",
                          str(tmp_path / "t.csv")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = (tmp_path / "t.csv").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("command:" in h for h in header) and any("train_size 300" in h for h in header)
    assert any("6 configurations with all 3 epochs" in h for h in header)
    df = pd.read_csv(tmp_path / "t.csv", comment="#")
    assert sorted(df.groupby("config")["epoch"].apply(list)) == [[1, 2, 3]] * 6
    assert set(df["family"]) == {"hourglass", "conventional"}
    # The packed curves end where a lone loop.train of the same configuration ends (same data, seed 0).
    gpu_search = load_bench("gpu_search")
    from hgsearch.data.registry import load_dataset

    data = prepare(load_dataset("idx", gpu_search.write_tiny_idx(tmp_path / "idx")), "superres", train_size=300)
    last = df[df["epoch"] == 3]
    for family in ("hourglass", "conventional"):
        row = last[last["family"] == family].iloc[0]
        arch = ArchSpec(family, data.d_in, data.d_out, int(row["width"]), int(row["bottleneck"]), int(row["depth"]))
        assert arch.params == row["params"]
        _, alone = train(arch, data, lr=float(row["lr"]), epochs=3, seed=0)
        assert row["psnr_val"] == pytest.approx(alone.psnr_val, abs=1e-3)
        assert row["psnr_test"] == pytest.approx(alone.psnr_test, abs=1e-3)


def test_full_split_psnr_from_head_and_rest():
    """evaluate(): the full-split PSNR assembled from a 128-multiple head and the rest equals evaluate_packed on it."""
    module = load_bench("curves_table")
    data = prepare(dataset(n_train=1800, n_test=100, side=12), "superres", val_size=300)
    specs = [ArchSpec("hourglass", data.d_in, data.d_out, 150, 20, 3), ArchSpec("conventional", data.d_in,
                                                                                 data.d_out, 144, 160, 1)]
    model = PackedMLP(specs, seed=1)
    val = data.val
    head, rest = Split(val.inputs[:256], val.targets[:256]), Split(val.inputs[256:], val.targets[256:])
    full, sub, test = module.evaluate(model, head, rest, data.test)
    assert full == pytest.approx(evaluate_packed(model, val), abs=1e-9)
    assert sub == pytest.approx(evaluate_packed(model, head), abs=1e-12)
    assert test == pytest.approx(evaluate_packed(model, data.test), abs=1e-12)
    assert abs(full[0] - sub[0]) > 1e-6  # the head alone is a different number: the check is not vacuous
