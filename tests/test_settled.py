"""Is the answer settled: search.settled's verdicts on a study's trials in the order they finished, the
hypervolume-vs-trials curve (results.settledness), and what `frontier` and the report show of both."""

from __future__ import annotations

import datetime

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from hgsearch.results.analysis import analyze
from hgsearch.results.report import render_html
from hgsearch.results.settledness import SETTLED_CSV_COLUMNS, hypervolume_curve
from hgsearch.results.stats import MILLION, hypervolume
from hgsearch.search import settled
from hgsearch.store.schema import DIRECTIONS, SETTINGS_KEY, family_study_name

optuna.logging.set_verbosity(optuna.logging.WARNING)
# On 20x20 images both families have models from 640,800 parameters (conventional's smallest), so the
# budgets compared are 1,012,877, 1,601,000, 2,530,612 and 4,000,000.
BUDGET = 4_000_000
LOW, LOWER_MID, MID, TOP = 1_012_877, 1_601_000, 2_530_612, 4_000_000
STUDY = "s"
T0 = datetime.datetime(2026, 12, 5, 9, 0)

# Each family's trials in the order they finished: (params, validation PSNR), None for one stopped early.
# Up to 1.86M Hourglass leads by 1.0 dB from its first trials on. At 4M conventional leads by 0.5 dB
# (30.5 vs 30.0) until Hourglass's last quarter (its 7th and 8th of 8) lifts it to +1.0 dB.
HOURGLASS = [(1_000_000, 28.0), (1_500_000, 28.5), (1_200_000, 28.2), (3_000_000, 30.0), (1_700_000, 28.6),
             (3_500_000, 30.0), (3_600_000, 31.5), (3_800_000, 31.0)]
CONVENTIONAL = [(1_100_000, 27.0), (1_600_000, 27.5), (1_300_000, 27.2), (3_000_000, 30.5), (1_800_000, 27.6),
                (3_200_000, 30.4), (3_400_000, 30.3), (1_400_000, 27.1)]
# The same study, except that Hourglass's last quarter stays at the 30.0 it had: nothing moves ...
QUIET = HOURGLASS[:6] + [(3_600_000, 30.0), (3_800_000, 29.5)]
# ... and whose odd and even trials (two half-size searches) give the same answers: conventional's 3.4M
# trial reaches what its 3.0M one did, so each half finds -0.5 dB at 4M.
QUIET_CONVENTIONAL = CONVENTIONAL[:6] + [(3_400_000, 30.5), (1_400_000, 27.1)]


def frozen(family: str, params: int, val: float | None, finished: datetime.datetime) -> optuna.trial.FrozenTrial:
    # Each size its own shape (depth): trials of one shape and lr would be seeds of one configuration.
    attrs = {"family": family, "d_in": 400, "d_out": 400, "width": 1000 if family == "hourglass" else 400,
             "bottleneck": 50, "depth": params // 1000, "fixed_win": False, "params": params,
             "trainable_params": params, "lr": 1e-3, "seed": 0, "epochs": 1}
    if val is None:
        t = create_trial(state=TrialState.PRUNED, user_attrs=attrs)
    else:
        t = create_trial(values=[float(params), val], state=TrialState.COMPLETE,
                         user_attrs={**attrs, "psnr_val": val, "psnr_test": val - 0.5, "seconds": 1.0})
    t.datetime_start, t.datetime_complete = finished - datetime.timedelta(seconds=30), finished
    return t


def make_study(url: str, families: dict[str, list], *, stored_in_reverse: bool = False) -> None:
    """Each family's trials finish one minute apart in list order. stored_in_reverse adds them last one first,
    so trial numbers run against the completion order: only the completion times tell which came last."""
    for fam, pts in families.items():
        s = optuna.create_study(study_name=family_study_name(STUDY, fam), storage=url, directions=DIRECTIONS)
        s.set_user_attr(SETTINGS_KEY, {"task": "superres", "dataset": "npz", "budget": BUDGET, "epochs": 1,
                                       "space": {"min_fraction": 0.1}})
        trials = [frozen(fam, p, v, T0 + datetime.timedelta(minutes=i)) for i, (p, v) in enumerate(pts)]
        s.add_trials(trials[::-1] if stored_in_reverse else trials)


def study_in_results(cwd, families: dict[str, list]) -> None:
    """The study where `frontier --study STUDY` run in cwd finds it."""
    (cwd / "results" / STUDY).mkdir(parents=True)
    make_study(f"sqlite:///{cwd / 'results' / STUDY / 'study.db'}", families)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


def states(an) -> dict[int, str]:
    return {v.budget: v.state for v in an.settled.verdicts}


def test_an_answer_the_last_quarter_still_moves_is_unsettled_at_that_budget(url):
    make_study(url, {"hourglass": HOURGLASS, "conventional": CONVENTIONAL})
    an = analyze(STUDY, url, load_data=False)
    floor = settled.comparison_floor(BUDGET, 0.1, 400, 400)
    assert [v.budget for v in an.settled.verdicts] == settled.budget_grid(BUDGET, floor) == [LOW, LOWER_MID, MID, TOP]
    assert states(an) == {LOW: "one family", LOWER_MID: "settled", MID: "settled", TOP: "unsettled"}
    top = an.settled.verdicts[-1]
    assert (top.gap, top.earlier_gap) == (pytest.approx(1.0), pytest.approx(-0.5))
    assert top.counts == {"hourglass": 8, "conventional": 8}
    assert not an.settled.settled
    assert an.settled.open_budgets == [TOP]
    assert an.settled.headline().startswith("not settled: more trials would likely change the answer at 4.000M;")
    assert "2.531M" not in an.settled.headline() and "--trials" in an.settled.headline()


def test_an_answer_the_last_quarter_does_not_move_is_settled(url):
    make_study(url, {"hourglass": QUIET, "conventional": QUIET_CONVENTIONAL})
    an = analyze(STUDY, url, load_data=False)
    assert states(an) == {LOW: "one family", LOWER_MID: "settled", MID: "settled", TOP: "settled"}
    assert an.settled.settled and an.settled.open_budgets == []
    assert an.settled.headline().startswith("settled at every budget where both families have models")
    assert an.settled.verdicts[-1].winner == "conventional"  # 30.5 vs 30.0


def test_trials_are_taken_in_the_order_they_finished_not_by_number(url):
    # Trial numbers reversed: by number, Hourglass's 31.5 would be among its first trials and 4M settled.
    make_study(url, {"hourglass": HOURGLASS, "conventional": CONVENTIONAL}, stored_in_reverse=True)
    an = analyze(STUDY, url, load_data=False)
    assert an.fr.trials.query("family == 'hourglass' and psnr_val == 31.5")["trial"].item() == 1
    assert states(an)[TOP] == "unsettled"
    curve = an.settled.curve[an.settled.curve["family"] == "hourglass"]
    assert list(curve["trial"]) == list(range(7, -1, -1))  # the last one stored finished first


def test_few_finished_models_within_a_budget(url):
    # Within 2.53M Hourglass has 2 models (3 needed); at 4M both have 3 or more.
    hg = [(1_000_000, 28.0), (3_000_000, 30.0), (1_500_000, 28.5), (3_500_000, 30.2)]
    make_study(url, {"hourglass": hg, "conventional": CONVENTIONAL})
    an = analyze(STUDY, url, load_data=False)
    mid = next(v for v in an.settled.verdicts if v.budget == MID)
    assert mid.state == "few trials" and mid.counts == {"hourglass": 2, "conventional": 5}
    assert "too few finished models" in mid.why()
    assert not an.settled.settled and MID in an.settled.open_budgets


def test_one_family_is_nothing_to_settle(url):
    make_study(url, {"hourglass": HOURGLASS})
    an = analyze(STUDY, url, load_data=False)
    assert an.comparison is None
    assert set(states(an).values()) == {"one family"}
    assert not an.settled.settled and an.settled.open_budgets == []
    assert an.settled.headline().startswith("not settled: no budget has finished models of both families")
    # One family still gets its curve, measured from the comparison's rule (here the floor of its lowest point).
    assert an.settled.reference == (BUDGET, 28.0)
    assert an.settled.curve["hypervolume"].iloc[-1] > 0


def test_the_curve_rises_never_falls_and_ends_at_the_frontier_hypervolume(url):
    stopped = HOURGLASS[:3] + [(2_000_000, None)] + HOURGLASS[3:]  # a trial stopped early: counted, no point
    make_study(url, {"hourglass": stopped, "conventional": CONVENTIONAL})
    an = analyze(STUDY, url, load_data=False)
    curve, ref = an.settled.curve, an.comparison.reference
    assert an.settled.reference == ref
    for fam, hv in (("hourglass", an.comparison.hv_hourglass), ("conventional", an.comparison.hv_conventional)):
        part = curve[curve["family"] == fam]
        assert list(part["finished"]) == list(range(1, len(part) + 1))
        assert (np.diff(part["hypervolume"]) >= 0).all()
        front = an.fr.family(fam)
        pareto = hypervolume(np.c_[front["params"] / MILLION, front["psnr_val"]], (ref[0] / MILLION, ref[1]))
        assert part["hypervolume"].iloc[-1] == pytest.approx(pareto) == pytest.approx(hv)
    hg = curve[curve["family"] == "hourglass"]
    assert len(hg) == 9 and hg["state"].iloc[3] == "PRUNED"
    assert hg["hypervolume"].iloc[3] == hg["hypervolume"].iloc[2]
    assert hg["hypervolume"].iloc[-1] > hg["hypervolume"].iloc[-4]  # the last quarter still moved this frontier


def test_the_curve_counts_each_point_once_at_the_moment_it_finished():
    # By hand, reference (4M, 20 dB), x in millions: (1, 22) covers 3 x 2 = 6; (2, 25) adds 2 x 3 = 6;
    # (1.5, 21) is dominated by (1, 22) and adds nothing; a tie in time is broken by the trial number.
    t = pd.Timestamp("2026-12-05 09:00")
    trials = pd.DataFrame({
        "family": "hourglass", "trial": [3, 0, 1, 2], "state": ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
        "params": [2_000_000, 1_000_000, 1_500_000, 500_000], "psnr_val": [25.0, 22.0, 21.0, np.nan],
        "datetime_complete": [t + pd.Timedelta(minutes=1), t, t + pd.Timedelta(minutes=1), t]})
    curve = hypervolume_curve(trials, (4_000_000, 20.0))
    assert list(curve["trial"]) == [0, 1, 3]  # the failed trial is not a finished one
    assert list(curve["hypervolume"]) == [pytest.approx(6.0), pytest.approx(6.0), pytest.approx(12.0)]


def test_frontier_prints_the_verdicts_and_writes_them(tmp_path, cli):
    study_in_results(tmp_path, {"hourglass": HOURGLASS, "conventional": CONVENTIONAL})
    code, out, err = cli("frontier", "--study", STUDY, "--plot", cwd=tmp_path)
    assert code == 0, err
    block = out[out.index("Is the answer settled?"):]  # after everything frontier printed before
    assert "Hourglass vs conventional" in out[:out.index("Is the answer settled?")]
    assert "4.000M" in block and "unsettled" in block and "moved the gap from -0.50 dB to +1.00 dB" in block
    assert "2.531M" in block and "hourglass ahead by 1.00 dB" in block
    assert block.rstrip().splitlines()[-1].startswith("not settled: more trials would likely change the answer at "
                                                      "4.000M")
    study_dir = tmp_path / "results" / STUDY
    rows = pd.read_csv(study_dir / "settled.csv")
    assert list(rows.columns) == SETTLED_CSV_COLUMNS
    assert list(rows["state"]) == ["one family", "settled", "settled", "unsettled"]
    assert rows["count_hourglass"].iloc[-1] == 8 and rows["earlier_gap"].iloc[-1] == pytest.approx(-0.5)
    assert (study_dir / "hypervolume.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (study_dir / "hypervolume.svg").is_file()
    code, again, err = cli("frontier", "--study", STUDY, cwd=tmp_path)  # without --plot the figure would be stale
    assert code == 0 and not (study_dir / "hypervolume.png").exists() and "hypervolume.png" in again


def test_frontier_json_holds_the_verdicts_and_prints_nothing_else(tmp_path, cli):
    import json

    study_in_results(tmp_path, {"hourglass": QUIET, "conventional": QUIET_CONVENTIONAL})
    code, out, err = cli("frontier", "--study", STUDY, "--json", cwd=tmp_path)
    assert code == 0, err
    doc = json.loads(out)["settled"]
    assert doc["settled"] is True and [b["state"] for b in doc["budgets"]][-1] == "settled"
    assert doc["thresholds"]["min_trials"] == settled.MIN_TRIALS and doc["reference"] == [BUDGET, 27.0]


def test_the_report_shows_the_curve_and_the_verdicts(url, tmp_path):
    make_study(url, {"hourglass": HOURGLASS, "conventional": CONVENTIONAL})
    page = render_html(analyze(STUDY, url, load_data=False), tmp_path, samples=False)
    section = page[page.index("<h2>Is the answer settled?</h2>"):]
    section = section[:section.index("<h2>", 4)]
    assert section.count("data:image/png;base64,") == 1 and 'alt="hypervolume vs finished trials"' in section
    assert "<td>unsettled</td>" in section and "<td>4.000M</td>" in section
    assert "not settled: more trials would likely change the answer at 4.000M" in section


def _studies(families: dict[str, list]) -> dict[str, optuna.Study]:
    out = {}
    for fam, pts in families.items():
        s = optuna.create_study(directions=DIRECTIONS)
        s.add_trials([frozen(fam, p, v, T0 + datetime.timedelta(minutes=i)) for i, (p, v) in enumerate(pts)])
        out[fam] = s
    return out


def test_until_settled_goes_on_while_the_answer_moves_and_stops_when_settled_or_capped():
    from types import SimpleNamespace

    from hgsearch.config import RunConfig
    from hgsearch.search.run import _more_trials

    geometry = SimpleNamespace(d_in=400, d_out=400)
    cfg = RunConfig(budget=BUDGET, trials=8, until_settled=True)
    more = _more_trials(cfg, _studies({"hourglass": HOURGLASS, "conventional": CONVENTIONAL}), geometry)
    assert more is not None and more[0].trials == 8 + settled.SETTLE_STEP and "4,000,000 (unsettled)" in more[1]
    assert _more_trials(cfg, _studies({"hourglass": QUIET, "conventional": QUIET_CONVENTIONAL}), geometry) is None
    capped = RunConfig(budget=BUDGET, trials=8, until_settled=True, max_trials=8)
    assert _more_trials(capped, _studies({"hourglass": HOURGLASS, "conventional": CONVENTIONAL}), geometry) is None
    near_cap = RunConfig(budget=BUDGET, trials=8, until_settled=True, max_trials=10)
    assert _more_trials(near_cap, _studies({"hourglass": HOURGLASS, "conventional": CONVENTIONAL}),
                        geometry)[0].trials == 10


def test_an_answer_whose_two_halves_disagree_is_not_settled_even_when_the_last_quarter_kept_it():
    # Hourglass's last quarter stays under its 30.0, so the gap at 4M did not move; but its odd trials
    # (29.0 best) and its even trials (30.0) give answers 0.8 dB apart.
    still = HOURGLASS[:6] + [(3_600_000, 29.0), (3_800_000, 29.5)]
    points = {"hourglass": still, "conventional": CONVENTIONAL}
    top = settled.verdicts(points, [TOP])[0]
    assert top.state == "unsettled" and top.gap == pytest.approx(top.earlier_gap)
    assert "half the trials say" in top.why()
    assert settled.verdicts(points, [TOP], halves=False)[0].state == "settled"
