"""The real CLI in subprocesses: an end-to-end search, frontier files and help (bad input: test_bad_input.py)."""

import re
from pathlib import Path

import pandas as pd
import pytest

from hgsearch.config import RunConfig
from hgsearch.model.families import build, count_module_params
from hgsearch.results.trials import FRONTIER_CSV_COLUMNS
from hgsearch.training.record import TrialRecord
from tests.conftest import hgsearch

BUDGET = 100_000


@pytest.fixture(scope="module")
def tiny_run(tiny_idx, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    args = ("--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--trials", "3", "--epochs", "1")
    first = hgsearch("run", *args, cwd=cwd)
    assert first.returncode == 0, first.stderr
    plot = hgsearch("frontier", "--plot", cwd=cwd)
    assert plot.returncode == 0, plot.stderr
    return cwd, args, first, plot


@pytest.mark.slow
def test_run_then_frontier_end_to_end(tiny_run):
    cwd, _, first, plot = tiny_run
    study_dir = cwd / "results" / "superres-idx-100K"
    assert {p.name for p in study_dir.iterdir()} >= {"study.db", "frontier.csv", "trials.csv", "frontier.png"}
    assert (study_dir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = pd.read_csv(study_dir / "frontier.csv")
    trials = pd.read_csv(study_dir / "trials.csv")
    assert list(front.columns) == FRONTIER_CSV_COLUMNS
    assert set(front["family"]) == {"hourglass", "conventional"}
    assert (trials["state"] == "COMPLETE").groupby(trials["family"]).sum().to_dict() == {
        "hourglass": 3, "conventional": 3}
    assert (trials["params"] <= BUDGET).all()
    for _, row in front.iterrows():
        spec = TrialRecord.from_row(row).spec  # a frontier row alone rebuilds the model
        assert spec.params == row["params"] == count_module_params(build(spec))[0]
    for _fam, rows in front.groupby("family"):  # each family's rows are mutually non-dominated
        for _, a in rows.iterrows():
            for _, b in rows.iterrows():
                assert not (b["params"] <= a["params"] and b["psnr_val"] >= a["psnr_val"]
                            and (b["params"] < a["params"] or b["psnr_val"] > a["psnr_val"]))
    assert "Pareto frontiers" in first.stdout and "wrote" in plot.stdout


@pytest.mark.slow
def test_same_command_resumes_without_retraining(tiny_run):
    cwd, args, _, _ = tiny_run
    again = hgsearch("run", *args, cwd=cwd)
    assert again.returncode == 0, again.stderr
    assert "#" not in again.stdout.split("study superres-idx-100K")[1].split("Pareto")[0]  # no trial ran
    more = hgsearch("run", *args[:-4], "--trials", "4", "--epochs", "1", cwd=cwd)
    trials = pd.read_csv(cwd / "results" / "superres-idx-100K" / "trials.csv")  # before frontier rewrite
    assert more.returncode == 0, more.stderr
    finished = re.findall(r"^\d\d:\d\d:\d\d done (hourglass|conventional) #\d+: val", more.stdout, re.M)
    assert sorted(finished) == ["conventional", "hourglass"]  # exactly one more per family
    assert len(trials) == 6


@pytest.mark.slow
def test_train_command(tiny_idx, tmp_path):
    res = hgsearch("train", "--family", "hourglass", "--width", "150", "--bottleneck", "12", "--depth", "2",
                   "--lr", "1e-3", "--dataset", "idx", "--data-dir", str(tiny_idx), "--epochs", "1",
                   "--save", str(tmp_path / "m.pt"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # Closed form P = width*d_in + d_out*width + 2*L*width*d_h; superres on 12x12 images: d_in 6*6, d_out 144.
    params = 150 * 36 + 144 * 150 + 2 * 2 * 150 * 12
    assert (f"hourglass: LxWxd_h 2x150x12 (depth, width, bottleneck), {params:,} parameters ({params:,} trainable), "
            "lr 0.001") in res.stdout
    assert re.search(r"validation PSNR \d+\.\d+ dB, test PSNR \d+\.\d+ dB", res.stdout)
    assert (tmp_path / "m.pt").stat().st_size > 0


def documents(text: str, option: str) -> bool:
    """Whether text names the option itself: `--seeds` does not document `--seed`, nor `--no-download` `--download`."""
    return re.search(rf"(?<![A-Za-z0-9-]){re.escape(option)}(?![a-z0-9-])", text) is not None


def test_documents_matches_whole_options_only():
    assert documents("`--seed 3`", "--seed") and documents("--seed=3,", "--seed") and documents("(--seed)", "--seed")
    assert documents("`--fixed-win/--trained-win`", "--trained-win")
    assert not documents("confirm --seeds 3", "--seed")  # the old substring test counted this
    assert not documents("--pack-size", "--pack") and not documents("--no-download", "--download")


def test_docs_document_every_command_and_option():
    # Like sqlite-utils: a command or option nobody can find in the docs does not exist for users.
    # README.md keeps one line per command; the reference is docs/*.md (every option in docs/commands.md).
    import typer.main

    from hgsearch.cli import app

    root = Path(__file__).resolve().parents[1]
    docs = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    group = typer.main.get_command(app)
    for param in group.params:  # the top-level --version and completion options
        for opt in param.opts:
            if opt.startswith("--") and opt != "--help":
                assert documents(docs, opt), f"hgsearch {opt} is in neither README.md nor docs/*.md"
    for name, command in group.commands.items():
        assert re.search(rf"`(hgsearch )?{name}\b", docs), f"command {name} is in neither README.md nor docs/*.md"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert documents(docs, opt), f"{name} {opt} is in neither README.md nor docs/*.md"


@pytest.mark.slow
def test_help_documents_every_command():
    top = hgsearch("--help")
    assert top.returncode == 0
    for cmd in ("run", "frontier", "show", "confirm", "report", "train"):
        assert cmd in top.stdout
        sub = hgsearch(cmd, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout and "--help" in sub.stdout


def test_run_passes_its_options_to_the_library(tmp_path, monkeypatch, cli):
    """The command's only job is to build the RunConfig: patch the library call and check what it gets."""
    import hgsearch.cli.commands
    import hgsearch.search.run
    from hgsearch.config import RunConfig, SpaceConfig

    got = []
    monkeypatch.setattr(hgsearch.search.run, "run_search", lambda cfg, reporter: got.append(cfg))
    monkeypatch.setattr(hgsearch.cli.commands, "_closing_table", lambda cfg: None)  # it reads the study and the data
    conf = tmp_path / "c.toml"
    conf.write_text("[run]\nepochs = 9\nnoise_sigma = 0.5\n[space]\nlr = [1e-4, 1e-3]\n")
    code, out, err = cli("run", "--budget", "2M", "--epochs", "3", "--trials", "5", "--family", "hourglass",
                         "--task", "denoise", "--dataset", "mnist", "--seed", "7", "--fixed-win", "--train-size",
                         "1000", "--augment", "flips", "--device", "cpu", "--study", "s1", "--results-dir",
                         str(tmp_path / "r"), "--config", str(conf), cwd=tmp_path)
    assert code == 0, err
    assert got == [RunConfig(budget=2_000_000, task="denoise", dataset="mnist", augment="flips", train_size=1000,
                             family="hourglass", trials=5, epochs=3, study="s1", results_dir=str(tmp_path / "r"),
                             seed=7, device="cpu", fixed_win=True, noise_sigma=0.5,
                             space=SpaceConfig(lr=(1e-4, 1e-3)))]  # the option beats the file's epochs = 9
    assert "budget 2M (2,000,000), 5 trials per family, 3 epochs each" in out


@pytest.fixture
def searches(monkeypatch):
    """The RunConfigs `run` would search with: the library call and the closing table patched out."""
    import hgsearch.cli.commands
    import hgsearch.search.run

    got = []
    monkeypatch.setattr(hgsearch.search.run, "run_search", lambda cfg, reporter: got.append(cfg))
    monkeypatch.setattr(hgsearch.cli.commands, "_closing_table", lambda cfg: None)
    return got


def test_config_file_values_are_the_options_defaults(tmp_path, cli, searches):
    """--config feeds Click's default_map: the file's [run] keys (the options' names) are the defaults,
    --help shows them, the command line wins, and the old key `pruning` still works with a note."""
    conf = tmp_path / "c.toml"
    conf.write_text('[run]\nbudget = "3M"\npruner = "psnr-bins"\ndownload = true\nepochs = 4\nbatch_size = 64\n')
    code, out, err = cli("run", "--config", str(conf), "--help", cwd=tmp_path)
    text = " ".join(out.split())
    assert code == 0 and "[default: psnr-bins]" in text and "[default: 4]" in text and "[default: download]" in text
    code, _, err = cli("run", "--config", str(conf), "--epochs", "2", "--no-download", cwd=tmp_path)
    assert code == 0, err
    assert err == ""  # no note for a file in today's keys
    assert searches[-1] == RunConfig(budget=3_000_000, pruning="psnr-bins", epochs=2, batch_size=64)

    conf.write_text('[run]\npruning = "none"\n')
    code, _, err = cli("run", "--config", str(conf), "--budget", "1M", cwd=tmp_path)
    assert code == 0, err
    assert err == f"note: {conf} [run]: the key pruning is now called pruner, like the option --pruner: rename it\n"
    assert searches[-1] == RunConfig(budget=1_000_000, pruning="none")


@pytest.mark.parametrize("given,seconds", [("90", 90.0), ("2.5", 2.5), ("90s", 90.0), ("1h30m", 5400.0)])
def test_timeout_takes_plain_seconds_as_optuna_does(tmp_path, cli, searches, monkeypatch, given, seconds):
    import threading

    timers = []
    monkeypatch.setattr(threading.Timer, "start", lambda self: timers.append(self.interval))
    code, _, err = cli("run", "--budget", "1M", "--timeout", given, cwd=tmp_path)
    assert code == 0, err
    assert timers == [seconds] and len(searches) == 1
