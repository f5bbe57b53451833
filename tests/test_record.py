"""TrialRecord: one definition of a trial's configuration, round-tripping through attrs, rows and weights."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
import torch

from hgsearch.model.families import ArchSpec, build
from hgsearch.search.trial import close_trial
from hgsearch.store.schema import RETRY_ATTR
from hgsearch.training import checkpoint
from hgsearch.training.loop import TrainResult
from hgsearch.training.record import (
    CONFIG_ATTRS,
    RESULT_ATTRS,
    TrialRecord,
    keep_front_weights,
    load_weights,
    result_attrs,
    save_weights,
    weights_path,
)

SPEC = ArchSpec("hourglass", 36, 144, 200, 17, 3, fixed_win=True)
REC = TrialRecord.of(SPEC, lr=3e-3, seed=5, epochs=4)


def test_record_holds_the_spec_and_both_counts():
    assert REC.spec == SPEC
    assert (REC.params, REC.trainable_params) == (SPEC.params, SPEC.trainable_params)
    assert REC.params - REC.trainable_params == 200 * 36  # W_in is fixed


def test_attrs_round_trip_and_ignore_other_attrs():
    attrs = REC.to_attrs()
    assert tuple(attrs) == CONFIG_ATTRS
    assert TrialRecord.from_attrs({**attrs, "psnr_val": 20.0, RETRY_ATTR: [3]}) == REC
    assert TrialRecord.from_attrs(attrs).to_attrs() == attrs


def test_attrs_round_trip_through_optuna_storage():
    study = optuna.create_study(storage="sqlite:///:memory:", directions=["minimize", "maximize"])
    trial = study.ask()
    for k, v in REC.to_attrs().items():
        trial.set_user_attr(k, v)
    study.tell(trial, [float(REC.params), 1.0])
    assert TrialRecord.from_attrs(study.trials[0].user_attrs) == REC


def test_a_csv_row_rebuilds_the_record(tmp_path):
    # numpy scalars and a CSV's bool/float columns come back as the same Python values
    path = tmp_path / "t.csv"
    pd.DataFrame([{**REC.to_attrs(), "trial": 7, "psnr_val": 21.5}]).to_csv(path, index=False)
    row = pd.read_csv(path).iloc[0]
    back = TrialRecord.from_row(row)
    assert back == REC and back.spec == SPEC
    assert type(back.width) is int and type(back.fixed_win) is bool and type(back.lr) is float


def test_a_retry_copies_the_record_and_not_the_results():
    study = optuna.create_study(storage="sqlite:///:memory:", directions=["minimize", "maximize"])
    trial = study.ask({"depth": optuna.distributions.IntDistribution(1, 8)})
    for k, v in {**REC.to_attrs(), "psnr_val": 20.0}.items():
        trial.set_user_attr(k, v)
    closed, _ = close_trial(study, study.trials[0], "interrupted", retry=True)
    assert closed
    retry = study.trials[1]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert TrialRecord.from_attrs(retry.user_attrs) == REC
    assert not set(RESULT_ATTRS) & set(retry.user_attrs) and retry.user_attrs[RETRY_ATTR] == [0]


def test_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build(SPEC)
    res = TrainResult(psnr_val=20.5, psnr_test=20.25, train_loss=0.01, seconds=1.0, epochs=4, steps=8)
    assert result_attrs(res) == {"psnr_val": 20.5, "psnr_test": 20.25, "train_loss": 0.01, "seconds": 1.0}
    path = weights_path(tmp_path, "hourglass", 3)
    save_weights(path, REC, model, res)
    payload = load_weights(path, torch.device("cpu"))
    assert ArchSpec(**payload["spec"]) == SPEC
    assert (payload["lr"], payload["epochs"], payload["seed"]) == (REC.lr, REC.epochs, REC.seed)
    assert (payload["psnr_val"], payload["psnr_test"]) == (20.5, 20.25)
    again = build(SPEC)
    again.load_state_dict(payload["state_dict"])
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_weights_cache_holds_the_front(tmp_path):
    """A trial off the front keeps nothing; one on it keeps its checkpoint's model and drops the files of the
    trials it dominates; a missing checkpoint is a reason, not an error."""
    torch.manual_seed(0)
    model = build(SPEC)
    ckpt, meta = tmp_path / "c.pt", {"trial": 9}
    checkpoint.save(ckpt, {"model": model.state_dict()}, meta)
    res = TrainResult(psnr_val=20.0, psnr_test=19.0, train_loss=0.01, seconds=1.0, epochs=4, steps=8)
    me = float(REC.params)
    for n in (1, 2):
        save_weights(weights_path(tmp_path, "hourglass", n), REC, model, res)
    assert keep_front_weights(tmp_path, 9, REC, res, {1: (me, 21.0)}, ckpt, meta) is None  # 1 dominates it
    assert not weights_path(tmp_path, "hourglass", 9).exists()
    assert keep_front_weights(tmp_path, 9, REC, res, {1: (me + 1, 19.0), 2: (me - 1, 19.0)}, ckpt, meta) is None
    assert [weights_path(tmp_path, "hourglass", n).exists() for n in (1, 2, 9)] == [False, True, True]
    payload = load_weights(weights_path(tmp_path, "hourglass", 9), torch.device("cpu"))
    assert payload["psnr_val"] == 20.0 and torch.equal(payload["state_dict"]["w_out.weight"], model.w_out.weight)
    why = keep_front_weights(tmp_path, 10, REC, res, {}, tmp_path / "none.pt", meta)
    assert why == "weights not kept (no checkpoint); report will retrain it"


def test_a_row_missing_a_field_is_refused():
    with pytest.raises(KeyError):
        TrialRecord.from_attrs({k: v for k, v in REC.to_attrs().items() if k != "seed"})
