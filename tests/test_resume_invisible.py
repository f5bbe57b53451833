"""Resume is invisible: a search killed with kill -9 at random moments and resumed each time with the same
command ends with the same configurations and values as the uninterrupted run, row by row."""

from __future__ import annotations

import random
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hgsearch.config import RunConfig
from hgsearch.search.sampler import draw, draw_index, history, origin
from tests.conftest import finish_run, run_trials, start_run

# Past the model-based samplers' random start-up (10), so model-fitted draws are compared too.
TRIALS = 13


def outcome(trials: list[FrozenTrial]) -> list[tuple]:
    """Each configuration's final attempt in draw order: (params, state, values), retries folded in."""
    final = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            final[origin(t)] = t
    firsts = sorted(t.number for t in trials if t.number in final)
    return [(final[n].params, final[n].state.name, final[n].values) for n in firsts]


def same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) == TRIALS
    for i, ((pa, sa, va), (pb, sb, vb)) in enumerate(zip(a, b, strict=True)):
        assert pa == pb, f"draw {i}: {pa} != {pb}"
        assert sa == sb, f"draw {i}: {sa} != {sb}"
        assert (va is None) == (vb is None) and (va is None or va == pytest.approx(vb, abs=1e-6)), (i, va, vb)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--pack-size", "3")], ids=["serial", "packs"])
def test_random_kill_9s_then_resume_end_as_the_uninterrupted_run(extra, tiny_idx, tmp_path):
    args = ("--trials", str(TRIALS), *extra)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    t0 = time.monotonic()
    finish_run(straight, tiny_idx, *args)
    span = time.monotonic() - t0
    rng = random.Random(f"kills{extra}")
    kills = 0
    for _ in range(5):  # kill -9 at random moments of the run, each time resuming with the same command
        proc = start_run(killed, tiny_idx, *args)
        time.sleep(rng.uniform(0.2, 0.6) * span)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
    finish_run(killed, tiny_idx, *args)
    a, b = run_trials(straight), run_trials(killed)
    assert kills >= 2
    assert any(t.state == TrialState.FAIL for ts in b.values() for t in ts)  # the kills did cut trials off
    for fam in ("hourglass", "conventional"):
        same(outcome(a[fam]), outcome(b[fam]))


def finished(number: int, params: dict, value: float, **attrs) -> FrozenTrial:
    t = optuna.trial.create_trial(
        state=TrialState.COMPLETE, params=params, values=[1000.0, value], user_attrs=attrs,
        distributions={k: optuna.distributions.FloatDistribution(0, 1) for k in params})
    t.number = number
    return t


def test_a_draw_sees_each_configuration_once_by_its_place_not_its_trial_number():
    p = [{"x": 0.1 * i} for i in range(4)]
    # Uninterrupted: trials 0, 1, 2 brought configurations 0, 1, 2.
    straight = [finished(0, p[0], 20.0), finished(1, p[1], 21.0), finished(2, p[2], 22.0)]
    # Interrupted: trial 1 killed (FAIL) and retried as trial 3; trial 2 cut off before its configuration
    # was stored (FAIL, no params); configuration 2 then came from trial 4.
    killed = optuna.trial.create_trial(state=TrialState.FAIL, params=p[1],
                                       distributions=straight[1].distributions)
    killed.number = 1
    empty = optuna.trial.create_trial(state=TrialState.FAIL)
    empty.number = 2
    resumed = [finished(0, p[0], 20.0), killed, empty, finished(3, p[1], 21.0, retry_of=[1]),
               finished(4, p[2], 22.0)]
    assert draw_index(straight, 3) == draw_index(resumed, 5) == 3
    seen_a, seen_b = history(straight, 3), history(resumed, draw_index(resumed, 5))
    assert [(t.params, t.state, t.values) for t in seen_a] == [(t.params, t.state, t.values) for t in seen_b]


def test_trials_created_together_never_share_a_draw():
    running = optuna.trial.create_trial(state=TrialState.RUNNING)  # another worker's, no configuration yet
    running.number = 0
    assert draw_index([running], 0) == 0 and draw_index([running], 1) == 1


@pytest.mark.parametrize("name", ["tpe-mv", "tpe", "gp", "qmc", "random"])
def test_every_sampler_draws_the_same_configuration_twice_and_another_at_the_next_place(name):
    cfg = RunConfig(budget=3_000_000, sampler=name)
    first = draw(cfg, "hourglass", 11, [], 196, 784)
    assert draw(cfg, "hourglass", 11, [], 196, 784) == first
    assert draw(cfg, "hourglass", 12, [], 196, 784)[0] != first[0]
    assert draw(cfg, "conventional", 11, [], 196, 784)[0] != draw(cfg, "conventional", 12, [], 196, 784)[0]


def test_qmc_draws_spread_over_the_sizes():
    cfg = RunConfig(budget=3_000_000, sampler="qmc")
    sizes = sorted(draw(cfg, "conventional", i, [], 196, 784)[0]["size"] for i in range(16))
    # A Sobol sequence puts one of 16 points in each sixteenth of every axis.
    assert [int(s * 16) for s in sizes] == list(range(16))


def test_a_run_writes_nothing_that_differs_when_nothing_is_interrupted(tiny_idx, tmp_path: Path):
    """Two uninterrupted runs of the same command: the same draws (the baseline the kill test relies on)."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        finish_run(tmp_path / d, tiny_idx, "--trials", "3", "--family", "hourglass")
    a, b = run_trials(tmp_path / "a")["hourglass"], run_trials(tmp_path / "b")["hourglass"]
    assert [t.params for t in a] == [t.params for t in b] and [t.values for t in a] == [t.values for t in b]


def test_a_place_already_drawn_is_never_drawn_again():
    # Trial 1 was claimed and its place counted by trial 2's draw (place 2); trial 1 was then closed
    # without a configuration, so by count alone trial 3 would land on place 2 again.
    first = finished(0, {"x": 0.1}, 20.0, draw=0)
    gone = optuna.trial.create_trial(state=TrialState.FAIL)
    gone.number = 1
    second = finished(2, {"x": 0.2}, 21.0, draw=2)
    assert draw_index([first, gone, second], 3) == 3


def test_a_draw_sees_its_own_batch_as_still_training_whatever_it_has_become():
    # Batches of 3: place 4's batch is places 3-5. Place 3 finished meanwhile (a resumed run trained it
    # alone); place 4 still sees it running, as in the uninterrupted run where 3, 4, 5 were one pack.
    ts = [finished(n, {"x": 0.1 * n}, 20.0 + n, draw=n) for n in range(4)]
    seen = history(ts, 4, batch=3)
    assert [t.state for t in seen] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]
    assert seen[3].values is None and seen[3].params == {"x": 0.30000000000000004}
    assert [t.state for t in history(ts, 4, batch=1)] == [TrialState.COMPLETE] * 4


def test_a_place_whose_trial_was_cut_off_before_storing_its_configuration_is_drawn_again():
    # Trial 1 took place 1, was killed before its configuration was stored (FAIL, no params): the next
    # new trial takes place 1, as the uninterrupted run's trial 1 did.
    first = finished(0, {"x": 0.1}, 20.0, draw=0)
    cut = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"draw": 1})
    cut.number = 1
    assert draw_index([first, cut], 2) == 1
