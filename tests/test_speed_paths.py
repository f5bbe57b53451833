"""Fast paths change no result: batched evaluation, fused AdamW, packed training, bf16 only on CUDA."""

import contextlib
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from hgsearch.data.tasks import Split, prepare
from hgsearch.errors import UsageError
from hgsearch.model.families import ArchSpec, build
from hgsearch.training.loop import EVAL_BATCHES, _autocast, evaluate, train
from hgsearch.training.packed import PackedMLP, check_packable, evaluate_packed, train_packed
from tests.conftest import REPO, dataset, load_bench

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data():
    return prepare(dataset(n_train=600, n_test=100, side=12), "superres", val_size=100)


@pytest.fixture(scope="module")
def noisy():
    return prepare(dataset(n_train=600, n_test=100, side=12), "denoise", val_size=100)


def reference_psnr(model, split, batch_size=128):
    """The definition, written plainly: one forward and one pooled MSE per batch of 128."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in zip(split.inputs.split(batch_size), split.targets.split(batch_size), strict=True):
            mse = F.mse_loss(model(x.float()), y.float()).item()
            total += x.shape[0] * 10 * math.log10(1 / max(mse, 1e-20))
    model.train()
    return total / len(split.inputs)


@pytest.mark.parametrize("n", [1, 127, 128, 300, 128 * EVAL_BATCHES, 128 * EVAL_BATCHES * 2 + 77])
def test_batched_evaluation_is_per_batch_of_128(n):
    torch.manual_seed(n)
    model = build(ArchSpec("hourglass", 10, 12, 16, 4, 2))
    model.train()
    model(torch.rand(64, 10))  # non-trivial BatchNorm running statistics
    split = Split(torch.rand(n, 10), torch.rand(n, 12))
    assert evaluate(model, split) == pytest.approx(reference_psnr(model, split), abs=1e-4)
    assert model.training  # evaluate restores the mode it found


def test_training_path_matches_the_naive_loop(data):
    """hgsearch's path (fused AdamW, uint8 batches, batched eval) vs the Optuna-example loop, same seed
    and batch order: only float rounding may differ."""
    bench = load_bench("run")
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 3)
    naive = bench.naive_trial(spec, bench.as_cpu_floats(data), 2, torch.device("cpu"))
    _, ours = train(spec, data, lr=bench.LR, epochs=2, seed=bench.SEED)
    assert ours.psnr_val == pytest.approx(naive["psnr_val"], abs=1e-3)
    assert ours.psnr_test == pytest.approx(naive["psnr_test"], abs=1e-3)


def test_bf16_autocast_never_on_cpu():
    assert isinstance(_autocast(torch.device("cpu")), contextlib.nullcontext)


@pytest.mark.parametrize("task", ["data", "noisy"])
@pytest.mark.slow
def test_packed_training_equals_separate_runs(task, request):
    d = request.getfixturevalue(task)
    specs = [ArchSpec("hourglass", d.d_in, d.d_out, 180, 12, depth) for depth in (1, 3, 2)]
    lrs = [2e-3, 1e-3, 3e-3]
    packed, results = train_packed(specs, d, lrs=lrs, epochs=2, seed=4)
    for k, (spec, lr) in enumerate(zip(specs, lrs, strict=True)):
        model, alone = train(spec, d, lr=lr, epochs=2, seed=4)
        assert results[k].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)
        assert results[k].psnr_test == pytest.approx(alone.psnr_test, abs=1e-3)
        assert results[k].train_loss == pytest.approx(alone.train_loss, rel=1e-4)
        # The unpacked model is the one train() returns: same weights, same evaluation.
        assert evaluate(packed.unpack(k), d.val) == pytest.approx(alone.psnr_val, abs=1e-3)
        assert torch.allclose(packed.unpack(k).w_out.weight, model.w_out.weight, atol=1e-5)


def test_padded_blocks_stay_identity(data):
    specs = [ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, depth) for depth in (1, 3)]
    packed, _ = train_packed(specs, data, lrs=[2e-3, 2e-3], epochs=1, seed=0)
    assert packed.mask[:, 0].flatten().tolist() == [1.0, 0.0, 0.0]
    assert torch.count_nonzero(packed.up[1][0]) == 0 and torch.count_nonzero(packed.up[2][0]) == 0
    assert torch.count_nonzero(packed.up[1][1]) > 0  # the deep model's real block did train
    x = torch.rand(5, data.d_in)
    packed.eval()
    assert torch.allclose(packed(x)[0], packed.unpack(0).eval()(x), atol=1e-6)  # bmm vs mm rounding


def test_packed_evaluation_matches_evaluate(data):
    specs = [ArchSpec("hourglass", data.d_in, data.d_out, 64, 8, depth) for depth in (2, 1)]
    packed = PackedMLP(specs, seed=1)
    got = evaluate_packed(packed, data.val)
    for k in range(2):
        assert got[k] == pytest.approx(evaluate(packed.unpack(k), data.val), abs=1e-4)


def test_packs_share_one_task_geometry(data):
    with pytest.raises(UsageError, match="share d_in and d_out"):
        check_packable([ArchSpec("hourglass", 36, 144, 180, 12, 1), ArchSpec("hourglass", 144, 144, 200, 12, 1)])
    with pytest.raises(UsageError, match="learning rates"):
        train_packed([ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 1)], data, lrs=[1e-3, 2e-3], epochs=1)


def test_a_diverging_model_does_not_disturb_its_pack(data):
    specs = [ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 2)] * 2
    _, results = train_packed(specs, data, lrs=[float("inf"), 2e-3], epochs=1, seed=2)
    _, alone = train(specs[1], data, lr=2e-3, epochs=1, seed=2)
    assert "non-finite" in str(results[0])
    assert results[1].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)


@pytest.mark.slow
def test_bench_quick_runs(tiny_idx):
    """bench/run.py --quick end to end (no timing asserted: it only must not rot)."""
    import subprocess

    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--dataset", "idx",
                          "--data-dir", str(tiny_idx)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "PSNR check: every path within" in out.stdout and "ratios vs naive" in out.stdout


@cuda
def test_cuda_bf16_training_keeps_psnr(data, monkeypatch):
    monkeypatch.setattr("hgsearch.training.loop.CUDA_BF16", True)
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 3)
    gpu = prepare(dataset(n_train=600, n_test=100, side=12), "superres", val_size=100, device="cuda")
    _, on_cpu = train(spec, data, lr=2e-3, epochs=3, seed=1)
    _, on_gpu = train(spec, gpu, lr=2e-3, epochs=3, seed=1)  # bf16 autocast, float32 evaluation
    assert on_gpu.psnr_val == pytest.approx(on_cpu.psnr_val, abs=0.1)


@cuda
def test_cuda_packed_equals_separate():
    gpu = prepare(dataset(n_train=600, n_test=100, side=12), "superres", val_size=100, device="cuda")
    specs = [ArchSpec("hourglass", gpu.d_in, gpu.d_out, 180, 12, depth) for depth in (1, 3)]
    _, results = train_packed(specs, gpu, lrs=[2e-3, 1e-3], epochs=2, seed=4)
    for k, lr in enumerate([2e-3, 1e-3]):
        _, alone = train(specs[k], gpu, lr=lr, epochs=2, seed=4)
        assert results[k].psnr_val == pytest.approx(alone.psnr_val, abs=0.1)  # GPU float32 (TF32 matmuls may differ)
