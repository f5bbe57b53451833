"""Seed confirmation and the report end to end on a tiny real search (real training, tiny IDX data)."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from hgsearch.results.analysis import analyze
from hgsearch.results.confirm import confirm_seeds
from hgsearch.results.report import write_report
from hgsearch.results.trials import load_seed_rows
from hgsearch.training.record import weights_path
from tests.conftest import hgsearch


@pytest.fixture(scope="module")
def tiny_study(tiny_idx, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("confirm")
    res = hgsearch("run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", "2",
                   "--epochs", "1", cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd, cwd / "results" / "superres-idx-100K"


@pytest.mark.slow
def test_confirm_then_frontier_and_report(tiny_study, tiny_idx):
    cwd, study_dir = tiny_study
    url = f"sqlite:///{study_dir / 'study.db'}"
    seen = []
    front = confirm_seeds("superres-idx-100K", url, 2, data_dir=str(tiny_idx),
                          reporter=lambda e: seen.append((type(e).__name__, getattr(e, "seed", None))))
    runs = [s for e, s in seen if e == "RunEnd"]
    assert runs and set(runs) == {1}  # the search's run is seed 0; one more seed per point
    assert (front["n_seeds"] == 2).all() and set(front["family"]) == {"hourglass", "conventional"}
    seeds = load_seed_rows("superres-idx-100K", url)
    assert (seeds["state"] == "COMPLETE").all() and len(seeds) == len(runs)

    # Re-running trains nothing: every (configuration, seed) is already in the storage.
    again = []
    confirm_seeds("superres-idx-100K", url, 2, data_dir=str(tiny_idx),
                  reporter=lambda e: again.append(type(e).__name__))
    assert "RunStart" not in again

    res = hgsearch("frontier", "--plot", "--data-dir", str(tiny_idx), cwd=cwd)
    assert res.returncode == 0, res.stderr
    assert "Hourglass vs conventional" in res.stdout and "95% CI" in res.stdout
    doc = json.loads((study_dir / "summary.json").read_text())
    assert doc["seeds_per_point"] == 2 and doc["baseline"]["task"] == "superres"
    assert any(b["ci"] is not None for b in doc["comparison"]["bins"])
    # One epoch on 500 blob images does not beat bicubic upsampling: the report must say so.
    assert all(p["learned_nothing"] == (p["psnr_val"] <= doc["baseline"]["psnr_val"]) for p in doc["frontier"])
    assert all(p["psnr_val_std"] is not None for p in doc["frontier"])
    for name in ("frontier.png", "frontier.svg", "scaling.png", "scaling.svg", "hypervolume.png", "frontier_means.csv",
                 "settled.csv"):
        assert (study_dir / name).is_file(), name

    # The search kept its front's weights (test_keep_weights.py); without them the report retrains.
    shutil.rmtree(study_dir / "weights")
    res = hgsearch("report", "--data-dir", str(tiny_idx), cwd=cwd)
    assert res.returncode == 0, res.stderr
    page = (study_dir / "report.html").read_text()
    assert not re.search(r"https?://", page)
    # frontier, hypervolume vs trials, scaling and learning curves, + one sample grid per point
    assert page.count("data:image/png;base64,") == 4 + len(doc["frontier"])
    assert "weights retrained" in page
    for p in doc["frontier"]:
        assert weights_path(study_dir, p["family"], p["trial"]).is_file()
    # The retrained model is the search's model: same seed, same code, same validation PSNR.
    for p in doc["frontier"]:
        m = re.search(rf"{p['family']} trial {p['trial']}\"[^>]*>\s*<p>weights retrained; validation PSNR of "
                      rf"this model ([\d.]+) dB", page)
        trials = pd.read_csv(study_dir / "trials.csv")
        stored = trials[(trials["family"] == p["family"]) & (trials["trial"] == p["trial"])]["psnr_val"].iloc[0]
        assert m and float(m.group(1)) == pytest.approx(stored, abs=0.01)
    # Second time (in-process, to spare a torch import): the cached weights are used.
    an = analyze("superres-idx-100K", url, data_dir=str(tiny_idx))
    assert "weights cached" in (write_report(an, study_dir)).read_text()


def test_config_from_settings_rebuilds_every_defining_setting(tiny_idx, tmp_path):
    # confirm and report retrain with the study's own settings: each one that defines a study
    # (search.identity.settings) must come back, or a retrained point would not be the searched model.
    from dataclasses import replace

    from hgsearch.config import RunConfig
    from hgsearch.data.tasks import load_task
    from hgsearch.search.identity import config_from_settings, settings

    cfg = RunConfig(budget=100_000, task="denoise", dataset="idx", data_dir=str(tiny_idx), epochs=3, seed=7,
                    fixed_win=True, augment="flips", train_size=300, val_size=50, noise_sigma=0.1,
                    results_dir=str(tmp_path), study="s")
    stored = settings(cfg, load_task(cfg), "hourglass")
    back = config_from_settings(stored, "s", data_dir=str(tiny_idx))
    assert settings(replace(back, results_dir=str(tmp_path)), load_task(back), "hourglass") == stored
