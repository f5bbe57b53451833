"""Repacking at epoch ends: members that retire (stopped early, failed) leave the pack, the rest go on exactly."""

import math

import pytest
import torch

from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.errors import TrialFailed
from hgsearch.model.families import ArchSpec
from hgsearch.training.loop import train
from hgsearch.training.packed import REBUILD_STEPS, repack_pays, train_packed

EPOCHS = 3
LRS = [3e-3, 1e-3, 2e-3, 4e-3]


@pytest.fixture(scope="module")
def task(tiny_idx):
    # 120 training images: one full batch of 64 and a partial one per epoch.
    return prepare(load_dataset("idx", tiny_idx), "superres", val_size=60, train_size=120)


def specs_for(d) -> list[ArchSpec]:
    """Member 0 is the widest and deepest, so the pack's padded shape shrinks when it leaves."""
    d_x = max(d.d_in, d.d_out)
    return [ArchSpec("hourglass", d.d_in, d.d_out, d_x + 30, 9, 3),
            ArchSpec("hourglass", d.d_in, d.d_out, d_x + 3, 2, 1),
            ArchSpec("conventional", d.d_in, d.d_out, d_x, d_x + 20, 2),
            ArchSpec("hourglass", d.d_in, d.d_out, d_x + 12, 5, 2, fixed_win=True)]


def run(d, *, repack: bool, lrs=LRS, stop=lambda k, epoch: True):
    """train_packed with the pack's shape after every epoch and each member's epoch-2 checkpoint state."""
    shapes, states = [], {}

    def on_epoch_end(k, state):
        if state["epoch"] == 2:
            states[k] = state
        return stop(k, state["epoch"])

    def on_pack_epoch(model, epoch):
        shapes.append((len(model.specs), tuple(model.w_in.shape), len(model.down), list(model.specs)))

    model, results = train_packed(specs_for(d), d, lrs=lrs, epochs=EPOCHS, batch_size=64, seed=3, repack=repack,
                                  on_epoch_end=on_epoch_end, on_pack_epoch=on_pack_epoch)
    return model, results, shapes, states


def prune_0(k: int, epoch: int) -> bool:
    """The early-stopping decision at rung 1 (after epoch 1) that stops member 0."""
    return not (k == 0 and epoch == 1)


def test_a_member_pruned_at_rung_1_leaves_and_the_pack_shrinks(task):
    d = task
    specs = specs_for(d)
    model, res, shapes, states = run(d, repack=True, stop=prune_0)
    # After epoch 1 the pack holds members 1-3 only, padded to their own (smaller) width and depth.
    n, w_in, depth, members = shapes[0]
    assert (n, depth, members) == (3, 2, specs[1:]) and w_in[:2] == (3, max(s.width for s in specs[1:]))
    assert [s[0] for s in shapes] == [3, 3, 3] and len(model.specs) == 3
    _, kept, kept_shapes, _ = run(d, repack=False, stop=prune_0)
    assert [s[0] for s in kept_shapes] == [4, 4, 4]  # without repack the pruned member stays, frozen
    # Each survivor ends where it ends without the repack and alone; its checkpoint after the repack
    # (sliced from the smaller pack) resumes in loop.train to the same result.
    for k in (1, 2, 3):
        _, alone = train(specs[k], d, lr=LRS[k], epochs=EPOCHS, batch_size=64, seed=3)
        assert res[k].psnr_val == pytest.approx(kept[k].psnr_val, abs=1e-3)
        assert res[k].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)
        assert res[k].psnr_test == pytest.approx(alone.psnr_test, abs=1e-3)
        assert res[k].train_loss == pytest.approx(alone.train_loss, rel=1e-4)
        _, resumed = train(specs[k], d, lr=LRS[k], epochs=EPOCHS, batch_size=64, seed=3, resume=states[k])
        assert resumed.psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)
    # The pruned member left with its frozen epoch-1 weights, evaluated at the end as before.
    assert res[0].epochs == kept[0].epochs == 1 and 0 not in states
    assert res[0].psnr_val == pytest.approx(kept[0].psnr_val, abs=1e-3)
    _, unpruned = train(specs[0], d, lr=LRS[0], epochs=EPOCHS, batch_size=64, seed=3)
    assert res[0].psnr_val != pytest.approx(unpruned.psnr_val, abs=1e-3)  # it really stopped early


def test_a_member_failing_with_nan_leaves_and_the_others_continue_exactly(task):
    d = task
    specs = specs_for(d)
    lrs = [LRS[0], float("inf"), *LRS[2:]]  # member 1's first update is non-finite
    model, res, shapes, _ = run(d, repack=True, lrs=lrs)
    assert isinstance(res[1], TrialFailed) and "epoch 1" in str(res[1])
    assert [s[3] for s in shapes] == [[specs[0], specs[2], specs[3]]] * EPOCHS
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for k in (0, 2, 3):
        _, alone = train(specs[k], d, lr=lrs[k], epochs=EPOCHS, batch_size=64, seed=3)
        assert res[k].psnr_val == pytest.approx(alone.psnr_val, abs=1e-3)
        assert res[k].epochs == EPOCHS and math.isfinite(res[k].train_loss)


def test_when_a_repack_pays():
    same = [ArchSpec("hourglass", 784, 784, 1024, 128, 16)] * 128
    everyone = list(range(128))
    # Eager (the CPU): a rebuild is a few copies, so any retired member leaves while a step remains.
    assert repack_pays(same, everyone[1:], 1, graphs=False)
    assert not repack_pays(same, everyone[1:], 0, graphs=False)  # the last epoch: nothing left to save
    assert not repack_pays(same, everyone, 469, graphs=False)  # nobody retired
    assert not repack_pays(same, [], 469, graphs=False)  # everyone retired: the pack just ends
    # With CUDA graphs the saving must beat the warm-up and the capture (REBUILD_STEPS steps).
    assert not repack_pays(same, everyone[1:], 469, graphs=True)  # 469 / 138 = 3.4 steps saved
    assert repack_pays(same, everyone[2:], 469, graphs=True)  # 6.8 steps
    assert 469 / 138 < REBUILD_STEPS < 2 * 469 / 138
    widest = [ArchSpec("hourglass", 784, 784, 2048, 128, 16), *same[1:]]
    assert repack_pays(widest, everyone[1:], 469, graphs=True)  # the padded width halves
