"""Per-epoch evaluation: the curve's last point is the final validation PSNR, and it changes no result."""

import pytest

from hgsearch.config import RunConfig
from hgsearch.data.tasks import prepare
from hgsearch.errors import UsageError
from hgsearch.model.families import ArchSpec
from hgsearch.training.loop import epoch_eval_split, train
from tests.conftest import dataset


@pytest.fixture(scope="module")
def data():
    return prepare(dataset(n_train=600, n_test=100, side=12), "superres", val_size=100)


def test_per_epoch_psnr_on_the_full_split_ends_at_the_final_psnr(data):
    spec = ArchSpec("hourglass", data.d_in, data.d_out, 180, 12, 2)
    curve = []
    _, res = train(spec, data, lr=3e-3, epochs=3, seed=1, epoch_eval=data.val,
                   on_epoch_end=lambda s: curve.append(s["psnr_val_epoch"]))
    assert len(curve) == 3 and curve[-1] == res.psnr_val
    assert curve[-1] > curve[0]
    # Evaluating between epochs touches neither the weights nor the random stream.
    _, plain = train(spec, data, lr=3e-3, epochs=3, seed=1, on_epoch_end=lambda s: None)
    assert (plain.psnr_val, plain.psnr_test, plain.train_loss) == (res.psnr_val, res.psnr_test, res.train_loss)


def test_a_subset_is_the_first_rows_and_is_scored_on_its_own(data):
    sub = epoch_eval_split(data.val, 32)
    assert len(sub) == 32 and bool((sub.targets == data.val.targets[:32]).all())
    assert epoch_eval_split(data.val, 0) is data.val and epoch_eval_split(data.val, 10**6) is data.val
    spec = ArchSpec("conventional", data.d_in, data.d_out, 144, 200, 1)
    seen = []
    _, res = train(spec, data, lr=1e-3, epochs=1, epoch_eval=sub,
                   on_epoch_end=lambda s: seen.append(s["psnr_val_epoch"]))
    assert seen[0] != res.psnr_val  # 32 of the 100 validation images score differently


@pytest.mark.parametrize("field,value", [("pruning", "median"), ("reduction_factor", 1), ("min_epochs", 0),
                                         ("prune_margin", -0.1), ("prune_min_peers", 0), ("epoch_eval_size", -1)])
def test_bad_pruning_settings(field, value):
    with pytest.raises(UsageError, match=field.split("_")[0]):
        RunConfig(**{field: value})
