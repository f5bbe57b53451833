"""bench/trial_path.py's counts on a hand-made call list (the real trace is the bench itself)."""

from __future__ import annotations

import hgsearch.config  # noqa: F401  (the property is looked up in the loaded module)
from tests.conftest import load_bench


def test_jumps_count_call_sites_once_and_only_between_hgsearch_frames():
    tp = load_bench("trial_path")
    run, loop = ("hgsearch.search.run", "run_search"), ("hgsearch.training.loop", "train")
    trial = ("hgsearch.search.trial", "TrialRun.epoch_end")
    calls = [
        (None, run),  # the script's call: no jump
        (run, ("hgsearch.search.run", "_run_search")),  # same module: no jump
        (("hgsearch.search.run", "_run_search"), loop),
        *[(loop, trial)] * 3,  # one call site, three epochs
        (None, ("hgsearch.store.resilient", "get_all_trials")),  # reached through Optuna: no jump
        (("hgsearch.search.run", "_run_search"), ("hgsearch.config", "RunConfig.study_dir")),  # a property
    ]
    r = tp.report(calls)
    # The property read counts as a call (every call), not as a jump a reader follows (the path).
    assert len(r["modules"]) == 5 and len(r["sites"]) == 2 and sum(r["every"].values()) == 5
    assert r["path"] == {"hgsearch.training.loop": 1, "hgsearch.search.trial": 1}
    assert r["every"]["hgsearch.search.trial"] == 3 and r["pairs"]["hgsearch.search.trial"] == 1
