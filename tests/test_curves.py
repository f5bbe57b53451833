"""Learning curves: stored as trial attributes, exported as curves.csv, drawn, read by the pruner."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from hgsearch.results.curves import CURVE_COLUMNS, load_curves, write_curves
from hgsearch.results.plots import curves_figure
from hgsearch.search.curves import curve_attrs, observation
from hgsearch.search.pruning import Pruner
from hgsearch.store.schema import DIRECTIONS, family_study_name


def _study(storage: str, family: str) -> optuna.Study:
    return optuna.create_study(study_name=family_study_name("s", family), storage=storage, directions=DIRECTIONS)


def test_curves_round_trip_through_the_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    hg, conv = _study(storage, "hourglass"), _study(storage, "conventional")
    done = hg.ask()
    done.set_user_attr("params", 1000)
    for epoch in (1, 2, 3):  # the hook rewrites both attributes after every epoch
        for k, v in curve_attrs([18.0, 19.5, 20.25][:epoch], [1.0, 2.0, 3.0][:epoch]).items():
            done.set_user_attr(k, v)
    hg.tell(done, [1000, 20.25])
    stopped = hg.ask()
    stopped.set_user_attr("params", 2000)
    for k, v in curve_attrs([15.0], [4.0]).items():
        stopped.set_user_attr(k, v)
    hg.tell(stopped, state=TrialState.PRUNED)  # allowed in a multi-objective study
    conv.ask()  # running, no epoch yet: no rows
    df = load_curves("s", storage)
    assert list(df.columns) == CURVE_COLUMNS
    assert df.to_dict("records") == [
        {"family": "hourglass", "trial": 0, "state": "COMPLETE", "epoch": 1, "psnr_val_epoch": 18.0, "seconds": 1.0},
        {"family": "hourglass", "trial": 0, "state": "COMPLETE", "epoch": 2, "psnr_val_epoch": 19.5, "seconds": 2.0},
        {"family": "hourglass", "trial": 0, "state": "COMPLETE", "epoch": 3, "psnr_val_epoch": 20.25, "seconds": 3.0},
        {"family": "hourglass", "trial": 1, "state": "PRUNED", "epoch": 1, "psnr_val_epoch": 15.0, "seconds": 4.0},
    ]
    assert [t.number for t in hg.best_trials] == [0]  # a stopped trial is never on the frontier
    path = write_curves(df, tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_csv(path), df)
    obs = [observation("hourglass", t) for t in hg.get_trials()]
    assert obs[0].curve == (18.0, 19.5, 20.25) and obs[1].params == 2000
    assert observation("conventional", conv.get_trials()[0]) is None
    # What the pruner reads from storage is what it decides on.
    assert not Pruner(min_peers=2).decide(obs[1], 1, obs).stop  # one peer: too few to judge
    assert Pruner(min_peers=1).decide(obs[1], 1, obs).stop


def test_curves_figure_draws_stopped_trials_faintly(tmp_path):
    df = pd.DataFrame([("hourglass", 0, "COMPLETE", e, 18 + e, e) for e in (1, 2, 3)]
                      + [("hourglass", 1, "PRUNED", 1, 15.0, 1.0)]
                      + [("conventional", 0, "COMPLETE", e, 17 + e, e) for e in (1, 2, 3)], columns=CURVE_COLUMNS)
    fig = curves_figure(df, highlight={"hourglass": {0}}, title="t")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["hourglass (2 trials)", "conventional (1 trials)"]
    alphas = sorted(line.get_alpha() for line in axes[0].get_lines())
    widths = sorted(line.get_linewidth() for line in axes[0].get_lines())
    assert alphas == [0.2, 1.0] and widths == [1.0, 2.5]
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
