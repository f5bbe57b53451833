"""The search keeps the weights of trials that complete on their family's front, so the report retrains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from hgsearch.config import RunConfig
from hgsearch.events import Note
from hgsearch.results.analysis import analyze
from hgsearch.results.confirm import frontier_model
from hgsearch.search import run as search
from hgsearch.training.loop import evaluate
from hgsearch.training.record import dominates, weights_path

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _cfg(tiny_idx: Path, tmp_path: Path, **kw) -> RunConfig:
    base = dict(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="both", trials=6, epochs=1,
                results_dir=str(tmp_path / "results"), study="s", seed=3, device="cpu")
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("pack_size", [1, 4], ids=["serial", "packs"])
def test_every_frontier_point_is_cached_and_exact(tiny_idx, tmp_path, pack_size):
    cfg = _cfg(tiny_idx, tmp_path, pack_size=pack_size)
    studies = search.run_search(cfg)
    study_dir = Path(cfg.study_dir)
    pruned_later = 0  # trials kept when they completed, deleted when a later one dominated them
    for family, study in studies.items():
        done = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(done) == cfg.trials
        for t in done:
            dominators = [u.number for u in done if dominates(tuple(u.values), tuple(t.values))]
            # Exactly the non-dominated trials have a file: the cache is the front.
            assert weights_path(study_dir, family, t.number).is_file() == (not dominators), (family, t.number)
            pruned_later += bool(dominators) and min(dominators) > t.number
    if pack_size == 1:  # serial trials complete in number order: deletion was exercised
        assert pruned_later
    an = analyze("s", cfg.storage_url, data_dir=str(tiny_idx), device="cpu")
    assert len(an.front) >= 2
    stored = {(f, t.number): t.user_attrs["psnr_val"] for f, s in studies.items() for t in s.get_trials()}
    for _, row in an.front.iterrows():
        model, info = frontier_model(row, an.data, cfg, study_dir)
        assert info["source"] == "cached"
        own = stored[(row["family"], int(row["trial"]))]
        assert info["psnr_val"] == own
        # The kept weights are the trial's model: evaluated again they give its stored validation PSNR.
        assert evaluate(model, an.data.val, cfg.batch_size) == pytest.approx(own, abs=1e-4)


def test_a_failed_weights_write_is_a_note_not_a_failure(tiny_idx, tmp_path):
    cfg = _cfg(tiny_idx, tmp_path, family="hourglass", trials=2, pack_size=1)
    study_dir = Path(cfg.study_dir)
    study_dir.mkdir(parents=True)
    (study_dir / "weights").write_text("a file where the weights folder goes")  # every save raises OSError
    notes = []
    studies = search.run_search(cfg, reporter=lambda e: notes.append(e.message) if isinstance(e, Note) else None)
    assert [t.state for t in studies["hourglass"].get_trials()] == [TrialState.COMPLETE] * 2
    assert any("cannot keep its weights" in n and "report will retrain it" in n for n in notes), notes
    assert not list((study_dir / "checkpoints").glob("*.pt"))
