"""The round driver: packs stepped interleaved give every member exactly what its pack gives alone."""

import copy
import dataclasses

import pytest
import torch

from hgsearch.data.registry import load_dataset
from hgsearch.data.tasks import prepare
from hgsearch.errors import TrialFailed
from hgsearch.model.families import ArchSpec
from hgsearch.training.loop import train
from hgsearch.training.packed import PackRun, train_packed
from hgsearch.training.rounds import drive, round_order, round_streams

EPOCHS = 2


@pytest.fixture(scope="module")
def task(tiny_idx):
    # 120 training images: one full batch of 64 and a partial one per epoch.
    return prepare(load_dataset("idx", tiny_idx), "superres", val_size=60, train_size=120)


def packs_for(d, resumed: list[dict]) -> list[dict]:
    """Three heterogeneous packs (keyword arguments of PackRun): a repacking one whose deep member is
    stopped after epoch 1, one resumed from loop.train's epoch-1 states, one with a diverging member."""
    d_x = max(d.d_in, d.d_out)
    return [
        dict(specs=[ArchSpec("hourglass", d.d_in, d.d_out, d_x + 30, 9, 3),
                    ArchSpec("conventional", d.d_in, d.d_out, d_x, d_x + 20, 2)],
             lrs=[3e-3, 1e-3], repack=True, stop=0),
        dict(specs=[ArchSpec("hourglass", d.d_in, d.d_out, d_x + 12, 5, 2, fixed_win=True),
                    ArchSpec("hourglass", d.d_in, d.d_out, d_x + 3, 2, 1)],
             lrs=[2e-3, 4e-3], resume=resumed),
        dict(specs=[ArchSpec("hourglass", d.d_in, d.d_out, d_x + 7, 4, 3),
                    ArchSpec("conventional", d.d_in, d.d_out, d_x, d_x + 5, 1)],
             lrs=[1e30, 2e-3]),  # 1e30: AdamW's decay alone overflows float32 at once
    ]


def kwargs(d, pack: dict, states: dict, key: int, seen: list | None = None, **extra) -> dict:
    """PackRun/train_packed arguments of one pack, recording each member's epoch-end state under (key, member)."""
    stop = pack.get("stop")

    def on_epoch_end(k, state):
        states[(key, k)] = state
        return not (k == stop and state["epoch"] == 1)

    def on_step(epoch, step, steps):
        if seen is not None:
            seen.append((key, epoch, step))

    return dict(specs=pack["specs"], data=d, lrs=pack["lrs"], epochs=EPOCHS, batch_size=64, seed=3,
                resume=pack.get("resume"), repack=pack.get("repack", False), on_epoch_end=on_epoch_end,
                on_step=on_step, **extra)


def same(a, b) -> bool:
    """Two results equal but for their wall-clock seconds."""
    if isinstance(a, TrialFailed) or isinstance(b, TrialFailed):
        return str(a) == str(b)
    return dataclasses.replace(a, seconds=0.0) == dataclasses.replace(b, seconds=0.0)


def test_a_round_of_three_packs_equals_each_pack_alone_and_train(task):
    d = task
    d_x = max(d.d_in, d.d_out)
    resumed = []
    for spec, lr in ((ArchSpec("hourglass", d.d_in, d.d_out, d_x + 12, 5, 2, fixed_win=True), 2e-3),
                     (ArchSpec("hourglass", d.d_in, d.d_out, d_x + 3, 2, 1), 4e-3)):
        train(spec, d, lr=lr, epochs=EPOCHS, batch_size=64, seed=3,
              on_epoch_end=lambda s: resumed.append(copy.deepcopy(s)) if s["epoch"] == 1 else None)
    packs = packs_for(d, resumed)
    alone_states: dict = {}
    alone = [train_packed(**kwargs(d, p, alone_states, j))[1] for j, p in enumerate(packs)]

    round_states: dict = {}
    seen: list = []
    got: dict[int, list] = {}

    def start(j):
        return lambda stream: PackRun(**kwargs(d, packs[j], round_states, j, seen, stream=stream))

    depths = [max(s.depth for s in p["specs"]) for p in packs]
    drive([start(j) for j in range(3)], depths, torch.device("cpu"),
          finished=lambda j, res: got.__setitem__(j, res), failed=lambda j, e: pytest.fail(str(e)))

    # Interleaved: one step of each live pack in turn, the deepest first; the resumed pack ends first.
    assert round_order(depths) == [0, 2, 1] and round_streams(torch.device("cpu"), 3) == [None] * 3
    assert seen[:6] == [(0, 0, 1), (2, 0, 1), (1, 1, 1), (0, 0, 2), (2, 0, 2), (1, 1, 2)]
    assert seen[6:] == [(0, 1, 1), (2, 1, 1), (0, 1, 2), (2, 1, 2)]
    # Exactly each pack's own results and checkpoints, whatever the interleaving.
    for j in range(3):
        assert all(same(a, b) for a, b in zip(got[j], alone[j], strict=True)), j
    assert round_states.keys() == alone_states.keys()
    for key, state in round_states.items():
        assert state["loss"] == alone_states[key]["loss"] and state["step"] == alone_states[key]["step"]
        for name, w in state["model"].items():
            assert torch.equal(w, alone_states[key]["model"][name]), (key, name)
    assert got[0][0].epochs == 1 and isinstance(got[2][0], TrialFailed) and "non-finite" in str(got[2][0])
    # And each member's result is loop.train's within the tolerance of the pack tests.
    for j, pack in enumerate(packs):
        for k, (spec, lr) in enumerate(zip(pack["specs"], pack["lrs"], strict=True)):
            if isinstance(got[j][k], TrialFailed):
                continue
            losses = {}
            _, ref = train(spec, d, lr=lr, epochs=EPOCHS, batch_size=64, seed=3,
                           on_epoch_end=lambda s, losses=losses: losses.__setitem__(s["epoch"], s["loss"]))
            if got[j][k].epochs == EPOCHS:
                assert got[j][k].psnr_val == pytest.approx(ref.psnr_val, abs=1e-3), (j, k)
            assert got[j][k].train_loss == pytest.approx(losses[got[j][k].epochs], rel=1e-4), (j, k)


def test_a_pack_out_of_memory_leaves_the_round_and_the_others_go_on(task):
    d = task
    packs = packs_for(d, [])[:1] + [dict(specs=packs_for(d, [])[2]["specs"], lrs=[1e-3, 2e-3])]
    alone = train_packed(**kwargs(d, packs[0], {}, 0))[1]

    def oom(epoch, step, steps):
        if (epoch, step) == (0, 2):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    got, failed = {}, {}
    starts = [lambda s: PackRun(**kwargs(d, packs[0], {}, 0, stream=s)),
              lambda s: PackRun(**{**kwargs(d, packs[1], {}, 1, stream=s), "on_step": oom})]
    drive(starts, [3, 2], torch.device("cpu"), finished=got.__setitem__, failed=failed.__setitem__)
    assert list(got) == [0] and list(failed) == [1] and "out of memory" in str(failed[1])
    assert all(same(a, b) for a, b in zip(got[0], alone, strict=True))


def test_a_pack_run_steps_only_while_training(task):
    d = task
    run = PackRun([ArchSpec("hourglass", d.d_in, d.d_out, max(d.d_in, d.d_out) + 3, 2, 1)], d, lrs=[1e-3],
                  epochs=1, batch_size=64)
    with pytest.raises(Exception, match="still training"):
        run.results()
    run.step()
    run.step()
    assert run.done
    with pytest.raises(Exception, match="finished training"):
        run.step()


def test_the_pack_executor_steps_a_round_together_and_halves_a_pack_out_of_memory(tiny_idx, tmp_path, monkeypatch):
    """5 trials in packs of at most 2, planned by the round-time model (as on CUDA): every pack of the
    round steps in turn; one pack runs out of memory at its second step, leaves the round while the
    others finish, and its members are retried alone in a second round; every member ends COMPLETE
    with loop.train's result."""
    from optuna.trial import TrialState

    from hgsearch.config import RunConfig
    from hgsearch.data.tasks import load_task
    from hgsearch.events import quiet
    from hgsearch.search import claims, executors, trial
    from hgsearch.search.context import FamilySearch
    from hgsearch.search.identity import open_studies
    from hgsearch.training.packing import RoundModel
    from hgsearch.training.record import TrialRecord

    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="hourglass", trials=5, epochs=1,
                    results_dir=str(tmp_path / "results"), study="s", seed=3, device="cpu")
    data = load_task(cfg)
    study = open_studies(cfg, ["hourglass"], data)["hourglass"]
    fs = FamilySearch(study, cfg, "hourglass", data, quiet)
    built, steps, oom = [], [], []

    class Recorded(PackRun):
        def __init__(self, specs, *args, on_step, **kw):
            name = len(built)
            built.append(len(specs))

            def step_hook(*a):  # a pack of 2 runs out of memory inside its step, after the round's first steps
                steps.append(name)
                if len(specs) == 2 and not oom and len(steps) > 3:
                    oom.append(name)
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                on_step(*a)

            super().__init__(specs, *args, on_step=step_hook, **kw)

    monkeypatch.setattr(executors, "PackRun", Recorded)
    runs = claims.claim_runs(fs, 5, lambda c, epoch, metrics: True)
    frozen = trial.run_trials(fs, runs, executors.PackExecutor(2, model=RoundModel(streams=3)))
    first = len(built) - 2  # packs of the first round; the out-of-memory pack's two members come back alone
    assert sorted(built[:first]) == [1, 2, 2] and built[first:] == [1, 1] and oom
    assert steps[:3] == [0, 1, 2]  # one step of each pack in turn
    assert [t.state for t in frozen] == [TrialState.COMPLETE] * 5
    for t in frozen:
        rec = TrialRecord.from_attrs(t.user_attrs)
        _, alone = train(rec.spec, data, lr=rec.lr, epochs=1, seed=rec.seed)
        assert t.user_attrs["psnr_val"] == pytest.approx(alone.psnr_val, abs=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_round_on_cuda_streams_and_graphs_equals_each_pack_alone(tiny_idx):
    """The driver's GPU path: each pack built, captured and replayed on its own stream (the deepest at
    high priority), stepped interleaved; each member's result is its pack's alone (graphs both ways)."""
    d = prepare(load_dataset("idx", tiny_idx), "superres", val_size=60, train_size=120, device="cuda")
    repacking, _, diverging = packs_for(d, [])
    packs = [repacking, {**diverging, "lrs": [1e-3, 2e-3]}]  # no diverging member: compare every result
    alone = [train_packed(**kwargs(d, p, {}, j))[1] for j, p in enumerate(packs)]
    streams = []

    def start(j):
        def make(stream):
            streams.append(stream)
            return PackRun(**kwargs(d, packs[j], {}, j, stream=stream))
        return make

    got = {}
    drive([start(j) for j in range(len(packs))], [max(s.depth for s in p["specs"]) for p in packs],
          torch.device("cuda"), finished=got.__setitem__, failed=lambda j, e: pytest.fail(str(e)))
    assert len({id(s) for s in streams}) == len(packs) and streams[0].priority < streams[1].priority
    for j in range(len(packs)):
        for a, b in zip(got[j], alone[j], strict=True):
            assert a.psnr_val == pytest.approx(b.psnr_val, abs=1e-4) and a.epochs == b.epochs
