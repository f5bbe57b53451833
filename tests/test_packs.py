"""Heterogeneous packs: zero-padded widths, bottlenecks and depths give each member train()'s result."""

import pytest
import torch

from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.errors import TrialFailed
from hgsearch.model.families import ArchSpec
from hgsearch.training.loop import evaluate, train
from hgsearch.training.packed import PackedMLP, PackStep, train_packed


@pytest.fixture(scope="module")
def tasks(tiny_idx):
    dataset = load_dataset("idx", tiny_idx)
    # 120 training images: one full batch of 64 and a partial one per epoch (the eager tail path).
    return {t: prepare(dataset, t, val_size=60, train_size=120) for t in ("denoise", "superres", "classify")}


def mixed_specs(d_in: int, d_out: int) -> list[ArchSpec]:
    """Both families, every dimension different, one fixed W_in: the shapes the search draws."""
    d_x = max(d_in, d_out)
    return [ArchSpec("hourglass", d_in, d_out, d_x + 30, 9, 3),
            ArchSpec("hourglass", d_in, d_out, d_x + 3, 2, 1),
            ArchSpec("conventional", d_in, d_out, d_x, d_x + 20, 2),
            ArchSpec("hourglass", d_in, d_out, d_x + 12, 5, 2, fixed_win=True)]


@pytest.mark.parametrize("task", ["denoise", "superres", "classify"])
def test_heterogeneous_pack_equals_separate_runs(task, tasks):
    d = tasks[task]
    specs = mixed_specs(d.d_in, d.d_out)
    lrs = [3e-3, 1e-3, 2e-3, 4e-3]
    packed, results = train_packed(specs, d, lrs=lrs, epochs=2, batch_size=64, seed=3)
    for k, (spec, lr) in enumerate(zip(specs, lrs, strict=True)):
        model, alone = train(spec, d, lr=lr, epochs=2, batch_size=64, seed=3)
        assert results[k].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3), spec
        assert results[k].psnr_test == pytest.approx(alone.psnr_test, abs=1e-3), spec
        assert results[k].train_loss == pytest.approx(alone.train_loss, rel=1e-4), spec
        unpacked = packed.unpack(k)
        assert torch.allclose(unpacked.w_in.weight, model.w_in.weight, atol=1e-4)  # Adam amplifies rounding
        assert torch.allclose(unpacked.blocks[-1].up.weight, model.blocks[-1].up.weight, atol=1e-4)
        assert evaluate(unpacked, d.val, 64) == pytest.approx(alone.psnr_val, abs=1e-3)


def test_padding_stays_exactly_zero(tasks):
    d = tasks["superres"]
    specs = mixed_specs(d.d_in, d.d_out)
    packed, _ = train_packed(specs, d, lrs=[3e-3] * 4, epochs=1, batch_size=64, seed=0)
    small = specs[1]  # width d_x + 3, bottleneck 2, depth 1: padded in every dimension
    w, h = small.width, small.bottleneck
    assert torch.count_nonzero(packed.w_in[1, w:]) == 0 and torch.count_nonzero(packed.w_out[1, :, w:]) == 0
    for layer in range(len(packed.down)):
        down, up = packed.down[layer][1], packed.up[layer][1]
        real = layer < small.depth
        assert torch.count_nonzero(down[h:]) == 0 and torch.count_nonzero(down[:, w:]) == 0
        assert torch.count_nonzero(up[w:]) == 0 and torch.count_nonzero(up[:, h:]) == 0
        assert (torch.count_nonzero(up) > 0) == real  # only real blocks train
        assert torch.count_nonzero(packed.running_mean[layer, 1, 0, w:]) == 0
    # The fixed W_in did not move: it is the initial one train() would build.
    fixed = PackedMLP(specs, seed=0).w_in[3]
    assert torch.equal(packed.w_in[3], fixed)


def test_step_keeps_state_in_tensors_and_counts_steps(tasks):
    """The capturable step reads nothing back: its step count and losses are device tensors."""
    d = tasks["classify"]
    model = PackedMLP(mixed_specs(d.d_in, d.d_out), seed=0)
    stepper = PackStep(model, [1e-3] * 4, total_steps=4, weight_decay=0.01)
    x, y = d.train.batch(torch.arange(64))
    for _ in range(3):
        stepper.step(x, y)
    assert stepper.t.item() == 3.0
    losses = stepper.take_epoch_losses(3 * 64)
    assert len(losses) == 4 and all(v > 0 for v in losses)
    assert stepper.loss_sum.abs().sum() == 0


def test_graphs_need_cuda():
    model = PackedMLP([ArchSpec("hourglass", 4, 4, 5, 2, 1)], seed=0)
    with pytest.raises(Exception, match="CUDA graphs need a CUDA device"):
        PackStep(model, [1e-3], total_steps=1, weight_decay=0.0, graphs=True)


def test_a_diverging_member_fails_alone_and_is_zeroed(tasks):
    d = tasks["superres"]
    specs = mixed_specs(d.d_in, d.d_out)
    lrs = [1e-3, float("inf"), 2e-3, 4e-3]
    packed, results = train_packed(specs, d, lrs=lrs, epochs=2, batch_size=64, seed=1)
    assert isinstance(results[1], TrialFailed) and "epoch 1" in str(results[1])
    assert all(torch.isfinite(p).all() for p in packed.parameters())  # nothing non-finite left in the pack
    for k in (0, 2, 3):
        _, alone = train(specs[k], d, lr=lrs[k], epochs=2, batch_size=64, seed=1)
        assert results[k].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)


def test_a_retired_member_is_frozen(tasks):
    """on_epoch returning False stops a member: its weights and statistics stop changing."""
    d = tasks["classify"]
    specs = mixed_specs(d.d_in, d.d_out)[:2]
    seen = []

    def on_epoch(k, epoch, metrics):
        seen.append((k, epoch))
        return not (k == 0 and epoch == 0)

    packed, results = train_packed(specs, d, lrs=[1e-3, 1e-3], epochs=2, batch_size=64, seed=0, on_epoch=on_epoch)
    assert seen == [(0, 0), (1, 0), (1, 1)]
    assert results[0].epochs == 1 and results[1].epochs == 2
    # The same pack with every member retired after the first epoch stops there: member 0 is the same.
    once, _ = train_packed(specs, d, lrs=[1e-3, 1e-3], epochs=2, batch_size=64, seed=0,
                           on_epoch=lambda k, e, m: False)
    assert torch.equal(packed.w_out[0], once.w_out[0])
    assert torch.equal(packed.running_var[:, 0], once.running_var[:, 0])


def test_plan_packs_groups_like_shapes_and_respects_limits():
    from hgsearch.training.packing import pack_cost, padding_waste, plan_packs

    small = [ArchSpec("hourglass", 16, 16, 20, 2, 1)] * 6
    big = [ArchSpec("hourglass", 16, 16, 400, 300, 12)] * 6
    specs = [s for pair in zip(small, big, strict=True) for s in pair]  # interleaved: arrival order mixes them
    packs = plan_packs(specs, max_k=4)
    assert sorted(i for p in packs for i in p) == list(range(12)) and all(len(p) <= 4 for p in packs)
    assert all(len({specs[i] for i in p}) == 1 for p in packs)  # no small member padded to a big one
    assert padding_waste(specs, packs) == 0.0
    naive = [list(range(i, i + 4)) for i in range(0, 12, 4)]
    assert padding_waste(specs, naive) > 0.9 and pack_cost(specs, packs) < pack_cost(specs, naive)
    # Different seeds or geometries never share a pack.
    seeded = plan_packs(small, max_k=8, seeds=[0, 1, 0, 1, 0, 1])
    assert sorted(sorted(p) for p in seeded) == [[0, 2, 4], [1, 3, 5]]


def test_pack_limits_and_memory_bound():
    from hgsearch.errors import UsageError
    from hgsearch.training.packing import CPU_PACK, member_bytes, pack_limits, plan_packs

    assert pack_limits(torch.device("cpu")) == (CPU_PACK, None)
    assert pack_limits(torch.device("cpu"), override=7) == (7, None)
    with pytest.raises(UsageError, match="at least 1"):
        pack_limits(torch.device("cpu"), override=0)
    specs = [ArchSpec("hourglass", 16, 16, 20, 2, 1)] * 5 + [ArchSpec("hourglass", 16, 16, 400, 300, 12)] * 2
    one_big = member_bytes(specs[-1:])
    packs = plan_packs(specs, max_k=8, max_bytes=one_big)  # room for one big member, or many small ones
    assert sorted(len(p) for p in packs) == [1, 1, 5]


@pytest.mark.slow
def test_gpu_bench_quick_runs_on_cpu(tmp_path):
    """bench/gpu_packs.py --quick end to end on the CPU: every section runs, none errors, JSON written."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_packs.py"), "--quick", "--json",
                          str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r]
    assert {r["section"] for r in rows} == {"waste", "naive", "packed", "hetero", "exact"}
    assert max(r["max_dpsnr_db"] for r in rows if r["section"] == "exact") < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_equals_eager(tiny_idx):
    d = prepare(load_dataset("idx", tiny_idx), "superres", val_size=60, train_size=120, device="cuda")
    specs = mixed_specs(d.d_in, d.d_out)
    lrs = [3e-3, 1e-3, 2e-3, 4e-3]
    _, eager = train_packed(specs, d, lrs=lrs, epochs=2, batch_size=64, seed=3, graphs=False)
    _, graph = train_packed(specs, d, lrs=lrs, epochs=2, batch_size=64, seed=3, graphs=True)
    for e, g in zip(eager, graph, strict=True):
        assert g.psnr_val == pytest.approx(e.psnr_val, abs=1e-4)
