"""Both block families: structure, and closed-form parameter counts equal to the built modules."""

import itertools

import pytest
import torch

from hgsearch.errors import UsageError
from hgsearch.model.families import ArchSpec, build, count_module_params, param_count


def test_paper_checks():
    # The two checks PAPER.md gives, on MNIST (784 -> 784).
    assert ArchSpec("hourglass", 784, 784, 785, 4, 10).params == 1_293_680
    assert ArchSpec("conventional", 784, 784, 784, 785, 1).params == 2_460_192


@pytest.mark.parametrize(
    "family,d_in,width,bottleneck,depth",
    [("hourglass", 784, w, h, L) for w, h, L in itertools.product((785, 1150), (4, 115, 480), (1, 3))]
    + [("hourglass", 196, 1470, 115, 2), ("conventional", 196, 784, 1150, 1)]
    + [("conventional", 784, 784, h, L) for h in (785, 2000) for L in (1, 2, 5)],
)
@pytest.mark.parametrize("fixed_win", [False, True])
def test_closed_form_equals_module(family, d_in, width, bottleneck, depth, fixed_win):
    spec = ArchSpec(family, d_in, 784, width, bottleneck, depth, fixed_win)
    total, trainable = count_module_params(build(spec))
    assert total == spec.params == param_count(d_in, 784, width, bottleneck, depth)
    assert trainable == spec.trainable_params
    assert trainable == total - (width * d_in if fixed_win else 0)


def test_structure_matches_paper():
    model = build(ArchSpec("hourglass", 196, 784, 800, 16, 3))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(norms) == 3 and all(not n.affine for n in norms)  # one pre-norm per block, no affine
    assert len(linears) == 2 + 2 * 3 and all(m.bias is None for m in linears)
    y = model(torch.randn(5, 196))
    assert y.shape == (5, 784) and (y >= 0).all() and (y <= 1).all()  # sigmoid output


def test_fixed_win_is_frozen_at_default_init():
    model = build(ArchSpec("hourglass", 784, 784, 900, 8, 1, fixed_win=True))
    w = model.w_in.weight
    assert not w.requires_grad
    assert w.abs().max() <= 1 / 784**0.5  # PyTorch's default U(-1/sqrt(d_in), 1/sqrt(d_in))


@pytest.mark.parametrize(
    "args",
    [("hourglass", 784, 784, 800, 800, 1), ("conventional", 784, 784, 784, 784, 1), ("mlp", 784, 784, 800, 8, 1),
     ("hourglass", 784, 784, 800, 8, 0)],
)
def test_invalid_shapes_rejected(args):
    with pytest.raises(UsageError):
        ArchSpec(*args)
