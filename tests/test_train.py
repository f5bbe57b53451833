"""Training: the loss goes down, PSNR is the paper's, failures are reported, seeds reproduce."""

import copy
import math

import pytest
import torch

from hgsearch.data.tasks import Split, prepare
from hgsearch.errors import TrialFailed, UsageError
from hgsearch.model.families import ArchSpec, build
from hgsearch.training import loop
from hgsearch.training.loop import as_float, evaluate, train
from tests.conftest import dataset


@pytest.fixture(scope="module")
def data():
    return prepare(dataset(n_train=600, n_test=100, side=12), "superres", val_size=100)


def test_a_few_steps_lower_the_loss(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 200, 20, 2)
    model = build(spec)
    before = evaluate(model, data.val)
    losses = []
    model, res = train(spec, data, lr=3e-3, epochs=3, progress=lambda e, s, n, loss: losses.append(loss))
    assert res.psnr_val > before + 3  # from an untrained sigmoid(~0) = 0.5 output to the images
    assert losses[-1] < losses[0]
    assert res.steps == 3 * math.ceil(500 / 128)


def test_same_seed_same_result(data):
    spec = ArchSpec("conventional", data.d_in, data.d_out, 144, 200, 1)
    r1 = train(spec, data, lr=1e-3, epochs=1, seed=3)[1]
    r2 = train(spec, data, lr=1e-3, epochs=1, seed=3)[1]
    r3 = train(spec, data, lr=1e-3, epochs=1, seed=4)[1]
    assert r1.psnr_val == r2.psnr_val and r1.psnr_test == r2.psnr_test
    assert r3.psnr_val != r1.psnr_val


def test_psnr_is_pooled_per_batch_of_128():
    class Half(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x, 0.5)

    targets = torch.cat([torch.full((128, 4), 0.5), torch.full((72, 4), 0.6)])  # batch MSEs 0 -> clipped, 0.01
    split = Split(targets.clone(), targets)
    got = evaluate(Half(), split)
    expected = (128 * 10 * math.log10(1 / 1e-20) + 72 * 20.0) / 200
    assert got == pytest.approx(expected)
    targets = torch.cat([torch.full((128, 4), 0.4), torch.full((128, 4), 0.7)])
    # Batch MSEs 0.01 and 0.04 -> 20 dB and 13.98 dB, averaged (not the PSNR of the pooled MSE).
    assert evaluate(Half(), Split(targets, targets)) == pytest.approx((20 + 10 * math.log10(25)) / 2)


def test_non_finite_loss_fails_the_trial(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 200, 20, 2)
    with pytest.raises(TrialFailed, match="non-finite"):
        train(spec, data, lr=float("inf"), epochs=1)


def test_shape_mismatch(data):
    with pytest.raises(UsageError):
        train(ArchSpec("hourglass", 196, 784, 800, 20, 1), data, lr=1e-3, epochs=1)


def test_fixed_win_stays_fixed(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 200, 20, 1, fixed_win=True)
    torch.manual_seed(0)
    w0 = build(spec).w_in.weight.clone()
    model, _ = train(spec, data, lr=3e-3, epochs=1, seed=0)
    assert torch.equal(model.w_in.weight, w0)


@pytest.mark.slow
def test_resume_from_epoch_state_matches_uninterrupted_run(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 2)
    states = []
    # The state holds live tensors (a checkpoint writes them at once); keep copies here.
    _, full = train(spec, data, lr=2e-3, epochs=3, seed=5, on_epoch_end=lambda s: states.append(copy.deepcopy(s)))
    assert [s["epoch"] for s in states] == [1, 2, 3]
    _, resumed = train(spec, data, lr=2e-3, epochs=3, seed=5, resume=states[0])
    assert resumed.psnr_val == pytest.approx(full.psnr_val, abs=1e-4)
    assert resumed.steps == full.steps


def test_uint8_splits_train_like_float(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 1)
    assert data.train.targets.dtype == torch.uint8  # prepare keeps images uint8 on the device
    f = lambda s: Split(as_float(s.inputs), as_float(s.targets))  # noqa: E731
    floats = type(data)(data.task, data.dataset, data.checksum, data.image_shape,
                        f(data.train), f(data.val), f(data.test), 0.0)
    a = train(spec, floats, lr=2e-3, epochs=1, seed=1)[1]
    b = train(spec, data, lr=2e-3, epochs=1, seed=1)[1]
    assert (a.psnr_val, a.psnr_test, a.train_loss) == (b.psnr_val, b.psnr_test, b.train_loss)  # per-batch = upfront


def test_a_stop_is_seen_before_the_very_next_step(data):
    """stop_check runs before every step, not every report (report_every=50 > the epoch's 4 steps)."""
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 64, 8, 1)
    calls, progress = [], []

    class Stop(Exception):
        pass

    def stop_check() -> None:
        calls.append(1)
        if len(calls) == 3:  # a stop arrived during step 2: step 3 does not start
            raise Stop

    with pytest.raises(Stop):
        train(spec, data, lr=1e-3, epochs=1, report_every=50, stop_check=stop_check,
              progress=lambda *a: progress.append(a))
    assert len(calls) == 3 and progress == []  # stopped mid-epoch, before any report


def test_an_epoch_end_callback_answering_false_ends_training_there(data, monkeypatch):
    """on_epoch_end answers whether to go on (True, or None from a callback that only records); False ends
    training after that epoch, evaluating nothing, and the result is None."""
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 64, 8, 1)
    evaluated, seen = [], []
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: evaluated.append(1) or 20.0)
    model, res = train(spec, data, lr=1e-3, epochs=4, on_epoch_end=lambda s: seen.append(s["epoch"]) or s["epoch"] < 2)
    assert seen == [1, 2] and res is None and evaluated == [] and isinstance(model, torch.nn.Module)
    _, res = train(spec, data, lr=1e-3, epochs=2, on_epoch_end=lambda s: None)
    assert res is not None and res.epochs == 2 and evaluated == [1, 1]
