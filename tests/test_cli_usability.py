"""A new user's first hour through the real CLI: help, logs, budgets, baselines, finding studies, previews."""

import json
import math
import re

import pytest

from hgsearch.cli import app
from hgsearch.cli import options as cli
from hgsearch.cli.progress import PlainProgress
from hgsearch.config import RunConfig, SpaceConfig, parse_budget
from hgsearch.errors import UsageError
from hgsearch.names import AUGMENTS, DATASETS, DEVICES, FAMILY_CHOICES, TASKS
from hgsearch.results.trials import load_frontier
from tests.conftest import hgsearch

RUN = ("--budget", "100K", "--dataset", "idx", "--trials", "2", "--epochs", "1")
COMMANDS = ("run", "frontier", "show", "confirm", "report", "train")


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", COMMANDS)
def test_help_reads_as_written_and_shows_every_default(name):
    res = hgsearch(name, "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # Click wraps lines; compare with whitespace collapsed
    # Each option's entry: from its line (two spaces, then the option) to the next option's line.
    entries = {m.group(1): " ".join(m.group(0).split())
               for m in re.finditer(r"^  (-[-\w]+)(?:.|\n(?!  -))*", res.stdout, re.M)}
    for param in _commands()[name].params:
        if param.name == "help":
            continue
        # Every bracketed phrase of the source help ("[run] and [space]") survives rendering.
        for bracketed in re.findall(r"\[[^\]]*\]", param.help or ""):
            assert bracketed in text, f"{name} {param.opts[0]}: {bracketed} lost from --help"
        block = entries[param.opts[0]]
        pure_flag = getattr(param, "is_flag", False) and not param.secondary_opts
        if not (param.required or pure_flag):
            assert "[default:" in block, f"{name} {param.opts[0]} shows no default"
    # One way to print a default, a value or words alike: Click's "(...)" marks defaults in words.
    assert "[default: (" not in text
    assert "-h, --help" in res.stdout


def test_top_level_help_summaries_end_where_a_sentence_ends():
    # Click cuts a command's first docstring paragraph to fit its line, ending it with "...".
    res = hgsearch("--help")
    listed = res.stdout.split("Commands:\n")[1]
    summaries = dict(re.findall(r"^  ([a-z]+)\s+(\S.*)$", listed, re.M))
    assert sorted(summaries) == sorted(COMMANDS)
    for name, command in _commands().items():
        for summary in (summaries[name], command.get_short_help_str()):  # as listed, and at Click's narrowest
            assert summary.endswith(".") and not summary.endswith("..."), f"{name}: {summary!r}"


def test_help_choices_and_defaults_come_from_the_library():
    defaults = RunConfig()
    for name in ("run", "train"):
        for param in _commands()[name].params:
            field = {"pruner": "pruning"}.get(param.name, param.name)
            if not param.required and hasattr(defaults, field):
                assert param.default == getattr(defaults, field), f"{name} {param.opts[0]}"
    assert [e.value for e in cli.Task] == list(TASKS) and [e.value for e in cli.Dataset] == list(DATASETS)
    assert [e.value for e in cli.Augment] == list(AUGMENTS) and [e.value for e in cli.Device] == list(DEVICES)
    assert [e.value for e in cli.Family] == list(FAMILY_CHOICES)
    lo, hi = SpaceConfig().lr
    assert math.isclose(cli.TRAIN_LR, math.sqrt(lo * hi))  # train's default lr: the search range's log-midpoint


def test_version_short_help_and_completion():
    assert hgsearch("--version").stdout.strip() == f"hgsearch {__import__('hgsearch').__version__}"
    top = hgsearch("-h")
    assert top.returncode == 0 and "--install-completion" in top.stdout and "--version" in top.stdout


@pytest.mark.parametrize("text,value", [("5e6", 5_000_000), ("5,000,000", 5_000_000), ("2.5e5", 250_000),
                                        ("1,500K", 1_500_000), ("5_000_000", 5_000_000)])
def test_budget_forms_people_write(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["1,5M", "5,00,000", "1,000,00", ",5M", "5e6M", "5e", "1.5"])
def test_budget_refuses_misplaced_commas_and_the_rest(text):
    with pytest.raises(UsageError, match="budget"):
        parse_budget(text)


def test_bad_input_is_one_line_naming_the_commands_help(tmp_path):
    comma = hgsearch("run", "--budget", "1,5M", cwd=tmp_path)
    assert comma.returncode == 2 and comma.stderr.count("\n") == 1 and "1.5M" in comma.stderr
    unknown = hgsearch("run", "--budget", "5M", "--bogus", cwd=tmp_path)
    assert unknown.returncode == 2 and "see hgsearch run --help" in unknown.stderr
    flag = hgsearch("frontier", "--plot", "true", cwd=tmp_path)
    assert flag.returncode == 2 and "--plot is a flag and takes no value" in flag.stderr
    assert flag.stderr.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_train_refuses_shapes_the_family_does_not_allow(tiny_idx, tmp_path):
    common = ("--dataset", "idx", "--data-dir", str(tiny_idx), "--epochs", "1")
    narrow = hgsearch("train", "--family", "hourglass", "--width", "100", "--bottleneck", "12", "--depth", "2",
                      *common, cwd=tmp_path)
    assert narrow.returncode == 2 and "over the image size 144" in narrow.stderr
    assert narrow.stderr.count("\n") == 1
    wide = hgsearch("train", "--family", "hourglass", "--width", "150", "--bottleneck", "150", "--depth", "2",
                    *common, cwd=tmp_path)
    assert wide.returncode == 2 and "bottleneck < width" in wide.stderr
    shallow = hgsearch("train", "--family", "hourglass", "--width", "150", "--bottleneck", "12", "--depth", "0",
                       *common, cwd=tmp_path)
    assert shallow.returncode == 2 and "--depth" in shallow.stderr


def test_train_reports_the_baseline_and_flags_learning_nothing(tiny_idx, tmp_path):
    # One epoch of 4 steps on the tiny set stays far under bicubic upsampling (~24 dB here).
    res = hgsearch("train", "--family", "hourglass", "--width", "150", "--bottleneck", "12", "--depth", "2",
                   "--dataset", "idx", "--data-dir", str(tiny_idx), "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "lr 0.0005" in res.stdout  # the default
    assert "1 epoch in" in res.stdout
    assert re.search(r"LEARNED NOTHING: at or under the trivial baseline \(bicubic upsampling.*: "
                     r"\d+\.\d+ dB val / \d+\.\d+ dB test\)", res.stdout)


def test_plain_progress_prints_one_line_per_epoch_for_long_trials(tmp_path):
    from hgsearch.events import Progress, TrialStart
    from hgsearch.model.families import ArchSpec

    log = tmp_path / "log"
    with log.open("w") as f:
        quiet, chatty = PlainProgress(f, 2, epoch_every=3600), PlainProgress(f, 2, epoch_every=0)
        spec = ArchSpec("hourglass", 196, 784, 800, 10, 2)
        for p in (quiet, chatty):
            p(TrialStart("hourglass", 0, spec, 1e-3, retry_of=[], resumed_epoch=0))
            for epoch in range(2):
                for step in (1, 2):  # mid-epoch reports never print; epoch ends do when the trial is long
                    p(Progress("hourglass", epoch=epoch, epochs=2, step=step, steps=2, loss=0.1))
    lines = log.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        f"start hourglass #0: LxWxd_h 2x800x10, {spec.params:,} params, lr 1.00e-03",
        f"start hourglass #0: LxWxd_h 2x800x10, {spec.params:,} params, lr 1.00e-03",
        "  hourglass epoch 1/2: train loss 0.10000", "  hourglass epoch 2/2: train loss 0.10000"]


@pytest.fixture(scope="module")
def logged_run(tiny_idx, tmp_path_factory):
    """A real search with stdout redirected to a file (not a terminal), as under nohup or CI."""
    cwd = tmp_path_factory.mktemp("logged")
    res = hgsearch("run", *RUN, "--data-dir", str(tiny_idx), cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd, res


@pytest.mark.slow
def test_redirected_run_prints_plain_lines(logged_run):
    _, res = logged_run
    lines = res.stdout.splitlines()
    assert lines[0] == "searching both on superres/idx, budget 100K (100,000), 2 trials per family, 1 epoch each"
    starts = [ln for ln in lines if re.fullmatch(r"\d\d:\d\d:\d\d start (hourglass|conventional) #\d: LxWxd_h "
                                                 r"\d+x\d+x\d+, [\d,]+ params, lr \d\.\d\de-\d\d", ln)]
    # Every PSNR beside the task's trivial baseline; 1 epoch of 4 steps learns nothing, and says so.
    ends = [ln for ln in lines if re.fullmatch(r"\d\d:\d\d:\d\d done (hourglass|conventional) #\d: val [\d.]+ dB "
                                               r"\(LEARNED NOTHING: at or under the baseline [\d.]+\), "
                                               r"test [\d.]+ dB, 1 epoch of 4 steps in [\d.]+ s \(\w+ \d/2\)", ln)]
    assert len(starts) == len(ends) == 4
    assert re.search(r"trials done hourglass 0/2, conventional 0/2; trivial baseline \(bicubic", res.stdout)
    assert "\x1b" not in res.stdout and "\r" not in res.stdout and "ETA" not in res.stdout  # no live panel
    title = next(i for i, ln in enumerate(lines) if "Pareto frontiers" in ln)
    assert lines[title].lstrip().startswith("Pareto frontiers")  # its own line, not glued to a panel's
    assert "trivial baseline" in res.stdout and "≤ baseline" in res.stdout  # 1 epoch on 4 steps learns nothing


@pytest.mark.slow
def test_dry_run_previews_the_runs_own_trials_and_writes_nothing(logged_run, tiny_idx, tmp_path):
    cwd, _ = logged_run
    dry = hgsearch("run", *RUN, "--data-dir", str(tiny_idx), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "results").exists() and "nothing was trained or written" in dry.stdout
    shown = set(re.findall(r"^(hourglass|conventional)\s+(\d)\s+([\d,]+)\s+(\d+x\d+x\d+)\s+(\S+)\s+[\d.]+$",
                           dry.stdout, re.M))
    db = cwd / "results" / "superres-idx-100K" / "study.db"
    trials = load_frontier("superres-idx-100K", f"sqlite:///{db}").trials
    ran = {(r.family, str(r.trial), f"{r.params:,}", f"{r.depth}x{r.width}x{r.bottleneck}", f"{r.lr:.1e}")
           for r in trials.itertuples()}
    assert shown == ran  # exactly the configurations the real run trained


@pytest.mark.slow
def test_finding_studies_json_and_stale_figures(logged_run, tiny_idx):
    cwd, _ = logged_run
    one = hgsearch("show", cwd=cwd)
    assert one.returncode == 0 and "using study superres-idx-100K (the only one under results/)" in one.stderr
    wrong = hgsearch("frontier", "--study", "nope", cwd=cwd)
    assert wrong.returncode == 2 and "the studies there are superres-idx-100K" in wrong.stderr
    as_json = json.loads(hgsearch("show", "--json", cwd=cwd).stdout)
    assert [f["complete"] for f in as_json["families"]] == [2, 2]

    figures = cwd / "results" / "superres-idx-100K" / "frontier.png"
    plotted = hgsearch("frontier", "--plot", cwd=cwd)
    assert plotted.returncode == 0 and figures.exists()
    front = hgsearch("frontier", "--json", "--data-dir", str(tiny_idx), cwd=cwd)
    assert front.returncode == 0, front.stderr
    summary = json.loads(front.stdout)  # stdout is pure JSON; messages went to stderr
    assert {p["learned_nothing"] for p in summary["frontier"]} == {True}
    assert not figures.exists() and "removed frontier.png" in front.stderr
    table = hgsearch("frontier", "--data-dir", str(tiny_idx), cwd=cwd)
    assert "rests on one seed" in table.stdout and "confirm --study superres-idx-100K --seeds 3" in table.stdout
    assert "learned nothing" in table.stdout

    second = hgsearch("run", *RUN, "--data-dir", str(tiny_idx), "--study", "other", "--trials", "1", cwd=cwd)
    assert second.returncode == 0, second.stderr
    listing = hgsearch("show", cwd=cwd)
    assert listing.returncode == 0
    assert re.search(r"superres-idx-100K\s+superres\s+idx\s+100K\s+hourglass 2, conventional 2", listing.stdout)
    assert re.search(r"other\s+superres\s+idx\s+100K\s+hourglass 1, conventional 1", listing.stdout)
    picked = hgsearch("frontier", cwd=cwd)
    assert "using study other: changed last of the 2" in picked.stderr
    names = [s["name"] for s in json.loads(hgsearch("show", "--json", cwd=cwd).stdout)]
    assert names == ["superres-idx-100K", "other"]
