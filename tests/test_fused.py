"""PackStep's fused AdamW: one torch._fused_adamw_ launch per member, the update of train()'s optimizer."""

import collections

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from hgsearch.model.families import ArchSpec, build
from hgsearch.training.loop import make_optimizer
from hgsearch.training.packed import PackedMLP, PackStep

D_IN, D_OUT = 16, 24
STEPS = 6


def specs() -> list[ArchSpec]:
    """Both families, every dimension different, one fixed W_in (as tests/test_packs.py's mixed_specs)."""
    return [ArchSpec("hourglass", D_IN, D_OUT, 54, 9, 3),
            ArchSpec("hourglass", D_IN, D_OUT, 27, 2, 1),
            ArchSpec("conventional", D_IN, D_OUT, 24, 44, 2),
            ArchSpec("hourglass", D_IN, D_OUT, 36, 5, 2, fixed_win=True)]


def batches(n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.rand(32, D_IN, generator=gen), torch.rand(32, D_OUT, generator=gen)) for _ in range(n)]


def alone(spec: ArchSpec, lr: float, data, total: int) -> tuple[torch.nn.Module, torch.optim.AdamW]:
    """train()'s inner loop on the same batches: torch.optim.AdamW(fused=True), lr (1 - s / total)."""
    torch.manual_seed(0)
    model = build(spec)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], lr, 0.01, torch.device("cpu"))
    for s, (x, y) in enumerate(data):
        opt.param_groups[0]["lr"] = lr * (1.0 - s / total)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt


def test_each_member_gets_train_s_adamw_update_and_moments():
    lrs = [3e-3, 1e-3, 2e-3, 4e-3]
    data = batches()
    packed = PackedMLP(specs(), seed=0)
    stepper = PackStep(packed, lrs, total_steps=STEPS, weight_decay=0.01)
    for x, y in data:
        stepper.step(x, y)
    for k, (spec, lr) in enumerate(zip(specs(), lrs, strict=True)):
        model, opt = alone(spec, lr, data, STEPS)
        ours = packed.unpack(k).state_dict()
        for name, value in model.state_dict().items():
            if name.endswith("num_batches_tracked"):  # unused with momentum set; a pack keeps no count
                continue
            assert torch.allclose(ours[name], value, atol=1e-6, rtol=1e-5), (k, name)
        state = stepper.member_optimizer_state(k, packed.unpack(k), lr)["state"]
        theirs = opt.state_dict()["state"]
        assert len(state) == len(theirs)  # a fixed W_in is in neither optimizer
        for i in theirs:
            assert torch.allclose(state[i]["exp_avg"], theirs[i]["exp_avg"], atol=1e-7, rtol=1e-5), (k, i)
            assert torch.allclose(state[i]["exp_avg_sq"], theirs[i]["exp_avg_sq"], atol=1e-9, rtol=1e-4), (k, i)
    # A fixed W_in neither moves nor decays; padding stays exactly zero.
    assert torch.equal(packed.w_in[3], PackedMLP(specs(), seed=0).w_in[3])
    small = specs()[1]
    assert torch.count_nonzero(packed.w_in[1, small.width:]) == 0
    assert torch.count_nonzero(packed.down[0][1, small.bottleneck:]) == 0
    assert torch.count_nonzero(packed.up[1][1]) == 0  # past its depth


def test_a_retired_member_neither_moves_nor_decays():
    packed = PackedMLP(specs(), seed=0)
    stepper = PackStep(packed, [3e-3] * 4, total_steps=STEPS, weight_decay=0.5)
    data = batches()
    stepper.step(*data[0])
    stepper.retire(2, failed=False)
    frozen = [p[2].clone() for p in stepper.params]
    for x, y in data[1:]:
        stepper.step(x, y)
    assert all(torch.equal(p[2], f) for p, f in zip(stepper.params, frozen, strict=True))
    assert not torch.equal(stepper.params[1][0], PackedMLP(specs(), seed=0).w_out[0])  # the others still train


def aten_ops(stepper: PackStep, x: torch.Tensor, y: torch.Tensor) -> collections.Counter:
    """The aten ops one eager PackStep._step dispatches, by name (top-level: an op's own children not counted)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper._step(x, y)
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::")
                               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def test_one_fused_launch_per_member_and_no_written_out_adam():
    packed = PackedMLP(specs(), seed=0)
    stepper = PackStep(packed, [3e-3] * 4, total_steps=STEPS, weight_decay=0.01)
    x, y = batches(1)[0]
    ops = aten_ops(stepper, x, y)
    assert ops["aten::_fused_adamw_"] == len(specs())
    # The written-out AdamW's signature ops (v * b2 + (1 - b2) g^2, sqrt(v)) are gone.
    assert ops["aten::addcmul_"] == 0 and ops["aten::sqrt"] == 0


@pytest.mark.parametrize("member", range(4))
def test_every_weight_gradient_is_contiguous(member):
    """The CPU fused kernel treats a non-contiguous view as contiguous (it updated the wrong elements when
    tried): the forward's feature-major layout must give gradients in the weights' own layout."""
    packed = PackedMLP(specs()[member:], seed=0)
    x, y = batches(1)[0]
    params = [p for p in packed.parameters() if p.requires_grad]
    grads = torch.autograd.grad((packed(x) - y).pow(2).sum(), params)
    assert all(g.is_contiguous() and g.stride() == p.stride() for g, p in zip(grads, params, strict=True))


def block_ops(block) -> collections.Counter:
    """Top-level aten ops (and compiled kernels) of one training block's forward and backward."""
    gen = torch.Generator().manual_seed(0)
    k, w, h, b = 3, 20, 6, 32
    z, down, up = (torch.randn(*shape, generator=gen, requires_grad=True)
                   for shape in ((k, w, b), (k, h, w), (k, w, h)))
    stats = (torch.ones(k, 1, 1), torch.zeros(k, 1, w), torch.ones(k, 1, w), torch.full((k, 1, 1), 0.1))
    grad = torch.ones(k, w, b)
    torch.autograd.grad(block(z, down, up, *stats, b / (b - 1)), (z, down, up), grad)  # compiles, if it does
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(block(z, down, up, *stats, b / (b - 1)), (z, down, up), grad)
    return collections.Counter(e.name for e in prof.events() if e.cpu_parent is None
                               or not e.cpu_parent.name.startswith("aten::"))


def test_a_failed_compile_falls_back_to_the_eager_block(monkeypatch):
    import hgsearch.training.packed as packed_mod

    def broken(*args):
        raise RuntimeError("no compiler\nmore")

    monkeypatch.setattr(packed_mod, "compiled_block", lambda: broken)
    data = batches(3)
    steppers = [PackStep(PackedMLP(specs(), seed=0), [3e-3] * 4, total_steps=3, weight_decay=0.01,
                         compile_blocks=c) for c in (True, False)]
    for stepper in steppers:
        for x, y in data:
            stepper.step(x, y)
    tried, eager = steppers
    assert tried.compile_errors == ["RuntimeError: no compiler"] and not tried.model.compile_blocks
    assert all(torch.equal(a, b) for a, b in zip(tried._state(), eager._state(), strict=True))


@pytest.mark.slow
def test_compiled_block_fuses_batchnorm_and_matches_eager():
    """torch.compile of train_block (about 25 s on 2 cores): same training within rounding, fewer ops."""
    import shutil

    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (inductor)")
    from hgsearch.training.packed import compiled_block, train_block

    data = batches()
    steppers = [PackStep(PackedMLP(specs(), seed=0), [3e-3, 1e-3, 2e-3, 4e-3], total_steps=STEPS,
                         weight_decay=0.01, compile_blocks=c) for c in (True, False)]
    for stepper in steppers:
        for x, y in data[:-1]:
            stepper.step(x, y)
        stepper.step(data[-1][0][:20], data[-1][1][:20])  # an epoch's short last batch: no recompile needed
    compiled, eager = steppers
    assert compiled.compile_errors == [] and compiled.model.compile_blocks
    for a, b in zip(compiled._state(), eager._state(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # Packs of other K, widths and bottlenecks reuse the compilation (a Parameter's shape would be static).
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    for members in (specs()[1:3], specs()[:3]):
        stepper = PackStep(PackedMLP(members, seed=0), [1e-3] * len(members), total_steps=2, weight_decay=0.01,
                           compile_blocks=True)
        for x, y in data[:2]:
            stepper.step(x, y)
        assert stepper.compile_errors == []
    assert len(_debug_get_cache_entry_list(train_block.__code__)) == 1
    fused, plain = block_ops(compiled_block()), block_ops(train_block)
    # BatchNorm's statistics, normalisation, ReLU and their backward run inside compiled kernels.
    assert plain["aten::var"] == 1 and plain["aten::rsqrt"] == 1 and plain["aten::threshold_backward"] == 1
    assert fused["aten::var"] == fused["aten::rsqrt"] == fused["aten::relu"] == fused["aten::threshold_backward"] == 0
    assert fused["aten::bmm"] == plain["aten::bmm"] == 6  # the matmuls stay library calls
