"""bench/side_by_side.py on two small stored searches: counts, epochs and hypervolume at a time cut, by hand."""

import datetime

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import load_bench

T0 = datetime.datetime(2026, 11, 27, 18, 0, 0)


@pytest.fixture(scope="module")
def m():
    return load_bench("side_by_side")


def trial(state, params, psnr_test, n_epochs, start_min, end_min, **record):
    attrs = {"params": params, "curve": [20.0] * n_epochs, **record}
    if state == TrialState.COMPLETE:
        attrs["psnr_test"] = attrs["psnr_val"] = psnr_test
    return FrozenTrial(number=0, state=state, value=None, values=[params, psnr_test] if state == TrialState.COMPLETE
                       else None, datetime_start=T0 + datetime.timedelta(minutes=start_min),
                       datetime_complete=T0 + datetime.timedelta(minutes=end_min), params={}, distributions={},
                       user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0)


def store(url, study, family, trials):
    s = optuna.create_study(study_name=f"{study}.{family}", storage=url, directions=["minimize", "maximize"])
    for t in trials:
        s.add_trial(t)


def test_hypervolume_and_counts_at_each_cut(m, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    store(url, "s", "hourglass", [trial(TrialState.COMPLETE, 1_000_000, 21.0, 9, 0, 5),
                                  trial(TrialState.PRUNED, 2_000_000, 0.0, 1, 5, 6),
                                  trial(TrialState.COMPLETE, 2_000_000, 22.0, 9, 6, 15)])
    # A conventional trial cut off after 4 epochs by a stop (FAIL), then resumed as a retry whose curve starts
    # with those 4 epochs: its 9 epochs count once.
    store(url, "s", "conventional", [trial(TrialState.FAIL, 2_500_000, 0.0, 4, 0, 4),
                                     trial(TrialState.COMPLETE, 2_500_000, 23.0, 9, 4, 12)])
    search = m.load(url, None)  # the only search in the storage is found by its family studies
    assert search.name == "s"
    ref = (3.0, 20.0)
    early = m.at(search, 10, ref)  # hourglass 1M done, 2M pruned, the rest still training
    assert (early["complete"], early["pruned"], early["epochs"]) == (1, 1, 10)
    assert early["hv"] == pytest.approx(2.0 * 1.0)  # 1M..3M at +1 dB
    late = m.at(search, 20, ref)
    assert (late["complete"], late["pruned"], late["epochs"]) == (3, 1, 28)
    # By hand: 1M..2M at +1 dB, 2M..2.5M at +2 dB, 2.5M..3M at +3 dB; each family alone too.
    assert late["hv"] == pytest.approx(1.0 + 1.0 + 1.5)
    assert late["hv_hourglass"] == pytest.approx(1.0 + 2.0) and late["hv_conventional"] == pytest.approx(1.5)


def test_a_storage_with_two_searches_needs_a_study_name(m, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    for name in ("a", "b"):
        store(url, name, "hourglass", [trial(TrialState.COMPLETE, 1_000_000, 21.0, 9, 0, 5)])
    with pytest.raises(SystemExit, match="pass --study"):
        m.load(url, None)
    assert m.load(url, "b").name == "b"


def test_minutes_to_reach_a_hypervolume(m, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    store(url, "s", "hourglass", [trial(TrialState.COMPLETE, 1_000_000, 21.0, 9, 0, 5),
                                  trial(TrialState.COMPLETE, 2_000_000, 22.0, 9, 5, 15)])
    search = m.load(url, None)
    ref = (3.0, 20.0)
    assert m.reach(search, 2.0, ref) == pytest.approx(5.0)  # the first trial alone: 2M x 1 dB
    assert m.reach(search, 2.5, ref) == pytest.approx(15.0)  # needs the second: 1 + 2 = 3
    assert m.reach(search, 3.5, ref) is None


def test_the_reference_comes_from_the_stored_settings(m, tmp_path):
    from hgsearch.store.schema import SETTINGS_KEY

    url = f"sqlite:///{tmp_path}/study.db"
    for name, budget in (("small", 3_000_000), ("large", 5_000_000)):
        # A whole trial record, as `run` stores it: analyze (which reads the settings) rebuilds the rows.
        record = dict(family="hourglass", d_in=196, d_out=784, width=785, bottleneck=4, depth=1, fixed_win=False,
                      trainable_params=1_000_000, lr=1e-3, seed=0, epochs=9, train_loss=0.01, seconds=1.0)
        store(url, name, "hourglass", [trial(TrialState.COMPLETE, 1_000_000, 21.0, 9, 0, 5, **record)])
        optuna.load_study(study_name=f"{name}.hourglass", storage=url).set_user_attr(
            SETTINGS_KEY, {"budget": budget, "family": "hourglass"})
    assert m.reference(url, "small", 19.5, None) == (3.0, 19.5)
    assert m.reference(url, "large", 19.5, None) == (5.0, 19.5)
