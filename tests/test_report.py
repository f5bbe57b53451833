"""Comparison numbers, summary.json, show and the offline report on stub studies in real storage."""

from __future__ import annotations

import base64
import io
import json
import re
import sqlite3

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from hgsearch.data.tasks import Split, TaskData
from hgsearch.results.analysis import analyze, summary, write_outputs
from hgsearch.results.report import render_html
from hgsearch.results.trials import study_state
from hgsearch.store.schema import DIRECTIONS, SETTINGS_KEY, family_study_name, seeds_study_name
from hgsearch.store.studies import list_studies
from hgsearch.training.baselines import baseline

optuna.logging.set_verbosity(optuna.logging.WARNING)
BUDGET = 4_000_000
STUDY = "stub"


def settings(family: str) -> dict:
    return {"task": "superres", "dataset": "idx", "dataset_checksum": "0" * 64, "budget": BUDGET, "epochs": 1,
            "family": family, "fixed_win": False, "batch_size": 128, "val_size": 100, "noise_sigma": None,
            "space": {}, "seed": 0, "protocol": "stub", "d_in": 196, "d_out": 784}


def trial(family: str, params: int, val: float, depth: int, lr: float = 1e-3, seed: int = 0,
          state: TrialState = TrialState.COMPLETE, **extra) -> optuna.trial.FrozenTrial:
    width, d_h = (1000, 50) if family == "hourglass" else (784, 900)
    attrs = {"family": family, "d_in": 196, "d_out": 784, "width": width, "bottleneck": d_h, "depth": depth,
             "fixed_win": False, "params": params, "trainable_params": params, "lr": lr, "seed": seed,
             "epochs": 1, **extra}
    if state == TrialState.COMPLETE:
        attrs |= {"psnr_val": val, "psnr_test": val - 0.5, "seconds": 10.0}
        return create_trial(values=[float(params), val], user_attrs=attrs, state=state)
    return create_trial(user_attrs={**attrs, "fail_reason": "stub"}, state=state)


# Known answers, in millions of parameters and dB. Hourglass (1M, 30), (2M, 32); conventional
# (2M, 29), (3M, 31), plus a dominated point and a failed trial each.
HOURGLASS = [(1_000_000, 30.0, 4), (2_000_000, 32.0, 8), (3_000_000, 31.5, 12)]
CONVENTIONAL = [(2_000_000, 29.0, 1), (3_000_000, 31.0, 2), (3_500_000, 30.0, 3)]


def make_study(url: str, seeds: list | None = None) -> None:
    for fam, pts in (("hourglass", HOURGLASS), ("conventional", CONVENTIONAL)):
        s = optuna.create_study(study_name=family_study_name(STUDY, fam), storage=url, directions=DIRECTIONS)
        s.set_user_attr(SETTINGS_KEY, settings(fam))
        s.add_trials([trial(fam, p, v, d) for p, v, d in pts] + [trial(fam, 1, 0, 1, state=TrialState.FAIL)])
    if seeds:
        s = optuna.create_study(study_name=seeds_study_name(STUDY), storage=url, directions=DIRECTIONS)
        s.add_trials(seeds)


@pytest.fixture
def stub(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url)
    return url, tmp_path


def test_comparison_numbers_through_storage(stub):
    url, out = stub
    an = analyze(STUDY, url, load_data=False, n_bins=2)
    c = an.comparison
    # ref = (budget, floor of the lowest frontier PSNR = 29). Hourglass: 1 dB over [1M, 2M) and 3 dB
    # over [2M, 4M] = 7; conventional: 0 over [2M, 3M) and 2 dB over [3M, 4M] = 2.
    assert c.reference == (BUDGET, 29.0)
    assert c.hv_hourglass == pytest.approx(7.0) and c.hv_conventional == pytest.approx(2.0)
    assert c.hv_difference == pytest.approx(5.0)
    assert c.front_sizes == (2, 2)
    assert (c.conventional_dominated, c.hourglass_dominated) == (1.0, 0.0)
    # Bins from the smallest finished model (1M) to 4M: edges 1M, 2M, 4M. At 2M: 32 vs 29; at 4M: 32 vs 31.
    assert [(b.hi, b.gap) for b in c.bins] == [(pytest.approx(2e6), pytest.approx(3.0)),
                                               (pytest.approx(4e6), pytest.approx(1.0))]
    assert all(b.ci is None for b in c.bins)  # one seed per point: no interval
    paths = write_outputs(an, out)
    doc = json.loads((out / "summary.json").read_text())
    assert {p.name for p in paths} == {"frontier.csv", "trials.csv", "curves.csv", "summary.json", "settled.csv"}
    assert doc["objectives"] == {"params": "minimize", "psnr_val": "maximize"}
    assert doc["reference_point"] == [BUDGET, 29.0] and doc["budget"] == BUDGET
    assert doc["comparison"]["hv_difference"] == pytest.approx(5.0)
    assert doc["dataset"]["checksum"] == "0" * 64 and doc["protocol"] == "stub"
    assert set(doc["versions"]) >= {"python", "torch", "optuna", "hgsearch"}
    assert [p["params"] for p in doc["frontier"]] == [2_000_000, 3_000_000, 1_000_000, 2_000_000]
    assert doc["scaling_pattern"][-1]["family"] == "hourglass" and doc["scaling_pattern"][-1]["depth"] == 8


@pytest.mark.slow
def test_seeds_give_means_std_and_intervals(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Extra seeds: hourglass 2M -> 32 (search), 33, 34: mean 33, std 1; conventional 3M -> 31, 30, 32.
    seeds = [trial("hourglass", 2_000_000, v, 8, seed=s, source_trial=1) for s, v in ((1, 33.0), (2, 34.0))]
    seeds += [trial("conventional", 3_000_000, v, 2, seed=s, source_trial=1) for s, v in ((1, 30.0), (2, 32.0))]
    seeds += [trial("hourglass", 2_000_000, 99.0, 8, seed=1, source_trial=1)]  # a duplicate seed counts once
    make_study(url, seeds)
    an = analyze(STUDY, url, load_data=False, n_bins=2)
    hg = an.front[(an.front["family"] == "hourglass") & (an.front["params"] == 2_000_000)].iloc[0]
    assert (hg["psnr_val"], hg["psnr_val_std"], hg["n_seeds"]) == (33.0, 1.0, 3)
    top = an.comparison.bins[-1]
    assert top.gap == pytest.approx(2.0)  # 33 - 31
    lo, hi = top.ci
    assert lo < 2.0 < hi and hi - lo == pytest.approx(2 * 2.776 * np.sqrt(2 / 3), rel=1e-3)  # t(4 dof)
    assert an.seeds == 1  # the unconfirmed points still have one seed
    assert summary(an)["comparison"]["bins"][-1]["ci"] == [pytest.approx(lo), pytest.approx(hi)]


@pytest.mark.slow
def test_report_is_offline_and_embeds_decodable_images(stub):
    from PIL import Image

    url, out = stub
    page = render_html(analyze(STUDY, url, load_data=False), out, samples=True)
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # frontier, hypervolume vs trials and scaling; no data here, so no sample grids
    for b64 in images:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), float)
        assert img.std() > 10 and (img < 128).mean() > 0.005  # drawn on, not blank
    assert "hypervolume hourglass" in page and "PSNR gap per budget" in page and "&quot;protocol&quot;" in page


def _clone_trials(db: str, study_name: str, copies: int) -> None:
    """Bulk-copy a study's first trial in SQL: Optuna adds trials one transaction at a time (slow)."""
    con = sqlite3.connect(db)
    sid, = con.execute("SELECT study_id FROM studies WHERE study_name = ?", (study_name,)).fetchone()
    tid, = con.execute("SELECT MIN(trial_id) FROM trials WHERE study_id = ?", (sid,)).fetchone()
    base_id, = con.execute("SELECT MAX(trial_id) FROM trials").fetchone()
    base_num, = con.execute("SELECT MAX(number) FROM trials WHERE study_id = ?", (sid,)).fetchone()
    row = con.execute("SELECT state, datetime_start, datetime_complete FROM trials WHERE trial_id = ?",
                      (tid,)).fetchone()
    vals = con.execute("SELECT objective, value, value_type FROM trial_values WHERE trial_id = ?", (tid,)).fetchall()
    attrs = con.execute('SELECT "key", value_json FROM trial_user_attributes WHERE trial_id = ?', (tid,)).fetchall()
    new = range(base_id + 1, base_id + 1 + copies)
    states = ["COMPLETE", "FAIL", "RUNNING"]
    con.executemany("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(t, base_num + i + 1, sid, states[i % 3] if i % 10 == 0 else row[0], row[1],
                      None if i % 30 == 0 else row[2]) for i, t in enumerate(new)])
    con.executemany("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?)",
                    [(t, o, v - (1 if o == 1 and i else 0), vt) for i, t in enumerate(new) for o, v, vt in vals])
    con.executemany('INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)',
                    [(t, k, v) for t in new for k, v in attrs])
    con.commit()
    con.close()


@pytest.mark.slow
def test_show_on_a_2000_trial_study(stub, cli):
    url, out = stub
    _clone_trials(str(out / "study.db"), family_study_name(STUDY, "hourglass"), 2000)
    state = study_state(STUDY, url).set_index("family")
    hg = state.loc["hourglass"]
    # 3 + 2000 clones of a complete trial, of which every 10th is re-stated: 0 -> COMPLETE,
    # 10 -> FAIL, 20 -> RUNNING, ... (200 re-stated: 67 complete, 67 failed, 66 running).
    assert (hg["complete"], hg["failed"], hg["running"]) == (3 + 1800 + 67, 1 + 67, 66)
    assert hg["best_val"] == 32.0 and hg["best_params"] == 2_000_000
    assert state.loc["conventional", "complete"] == 3
    code, stdout, stderr = cli("show", "--study", STUDY, "--storage", url)
    assert code == 0, stderr
    assert re.search(r"hourglass\s+1870\s+0\s+66\s+68", stdout), stdout  # complete, stopped early, running, failed


def _study_dir(root, name: str) -> str:
    (root / name).mkdir()
    url = f"sqlite:///{root / name / 'study.db'}"
    make_study(url)
    return url


def test_the_study_list_counts_finished_trials_as_run_does(tmp_path):
    url = _study_dir(tmp_path, "a")
    hourglass = optuna.load_study(study_name=family_study_name(STUDY, "hourglass"), storage=url)
    hourglass.add_trial(trial("hourglass", 1_500_000, 25.0, 2, state=TrialState.PRUNED))
    # run's target counts completed and stopped-early trials (schema.FINISHED); so does the list.
    assert [s.done for s in list_studies(tmp_path)] == [{"hourglass": 4, "conventional": 3}]


def test_an_unreadable_database_does_not_hide_the_other_studies(tmp_path):
    _study_dir(tmp_path, "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.db").write_bytes(b"not a database " * 100)
    studies = {s.name: s for s in list_studies(tmp_path)}
    assert set(studies) == {"good", "bad"}
    assert studies["good"].error is None and studies["good"].task == "superres"
    assert studies["good"].done == {"hourglass": 3, "conventional": 3}
    bad = studies["bad"]
    assert "bad/study.db" in bad.error and "\n" not in bad.error and (bad.task, bad.done) == (None, {})
    assert json.loads(json.dumps(bad.to_dict()))["error"] == bad.error


def test_show_lists_an_unreadable_study_with_why(tmp_path, cli):
    _study_dir(tmp_path, "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.db").write_bytes(b"not a database " * 100)
    code, out, err = cli("show", "--results-dir", str(tmp_path))
    assert code == 0, err
    assert re.search(r"^bad +- +- +- +unreadable \(see below\)", out, re.M), out
    assert re.search(r"^good +superres .* hourglass 3, conventional 3", out, re.M), out
    assert re.fullmatch(r"bad: cannot read storage \S+bad/study.db: file is not a database.*\n", err), err


def test_a_relative_sqlite_url_reads_the_study_of_the_current_directory(tmp_path, monkeypatch):
    # One storage is cached per file: the same relative URL from another directory is another file.
    for name, pts in (("one", HOURGLASS[:1]), ("two", HOURGLASS)):
        (tmp_path / name / "s").mkdir(parents=True)
        s = optuna.create_study(study_name=family_study_name(STUDY, "hourglass"),
                                storage=f"sqlite:///{tmp_path / name / 's' / 'study.db'}", directions=DIRECTIONS)
        s.add_trials([trial("hourglass", p, v, d) for p, v, d in pts])
    counts = []
    for name in ("one", "two"):
        monkeypatch.chdir(tmp_path / name)
        counts.append(int(study_state(STUDY, "sqlite:///s/study.db").loc[0, "complete"]))
    assert counts == [1, 3]


def test_show_confirm_report_errors_are_one_line(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    for cmd in ("show", "report", "confirm"):
        code, _, err = cli(cmd, *(("--seeds", "2") if cmd == "confirm" else ()), "--study", "nope")
        assert code == 2 and err.strip().count("\n") == 0 and "no study 'nope'" in err


# --- baselines -----------------------------------------------------------------------------------

def _data(task: str, inputs: torch.Tensor, targets: torch.Tensor, train_x=None, train_y=None) -> TaskData:
    tr = Split(train_x if train_x is not None else inputs, train_y if train_y is not None else targets)
    return TaskData(task, "stub", "0", (1, 4, 4), tr, Split(inputs, targets), Split(inputs, targets), 0.0)


def test_baselines_known_answers():
    clean = torch.full((8, 16), 0.5)
    noisy = clean + 0.1  # MSE 0.01 -> 20 dB
    assert baseline(_data("denoise", noisy, clean)).psnr_test == pytest.approx(20.0, abs=1e-4)
    # A constant image is reproduced exactly by bicubic upsampling (weights sum to one).
    sr = baseline(_data("superres", torch.full((8, 4), 0.3), torch.full((8, 16), 0.3)))
    assert sr.psnr_val > 100 and "bicubic" in sr.method
    # Two classes, inputs near their class means: nearest mean picks the right prototype every time.
    protos = torch.stack([torch.zeros(16), torch.ones(16)])
    labels = torch.tensor([0, 1] * 4)
    x = protos[labels] * 0.8 + 0.1
    cl = baseline(_data("classify", x, protos[labels]))
    assert cl.psnr_test > 100
    wrong = baseline(_data("classify", x, protos[1 - labels], train_x=x, train_y=protos[labels]))
    assert wrong.psnr_test == pytest.approx(0.0, abs=1e-6)  # every answer off by 1 in every pixel
