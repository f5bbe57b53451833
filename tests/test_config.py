"""Budget parsing and TOML configuration."""

import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from hgsearch.config import RunConfig, format_budget, load_config, parse_budget, parse_duration, read_config
from hgsearch.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,value", [("500K", 500_000), ("5M", 5_000_000), ("1.5M", 1_500_000),
                                        ("2500000", 2_500_000), ("2_500_000", 2_500_000), (" 3m ", 3_000_000),
                                        ("1G", 10**9), ("750k", 750_000)])
def test_budget_parsing(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["0", "-5M", "5X", "", "1e400", "abc", "1.2345678M", "0K", "5 M M", "nan", "inf"])
def test_bad_budgets(text):
    with pytest.raises(UsageError, match="budget"):
        parse_budget(text)


@pytest.mark.parametrize("n,label", [(5_000_000, "5M"), (1_500_000, "1.5M"), (500_000, "500K"), (999, "999"),
                                     (1_234_567, "1234567")])
def test_format_budget_round_trips(n, label):
    assert format_budget(n) == label
    assert parse_budget(label) == n


def test_default_toml_matches_embedded_defaults():
    doc = tomllib.loads((REPO / "configs" / "default.toml").read_text())
    cfg = load_config(REPO / "configs" / "default.toml")
    assert cfg == RunConfig()
    # Every field of the dataclasses is spelled out in the file (so it documents all of them), each under
    # its option's name: the pruning rule is --pruner, so its key is pruner.
    fields = set(asdict(RunConfig())) - {"budget", "data_dir", "study", "storage", "space", "pruning"}
    assert set(doc["run"]) == fields | {"pruner"}
    assert set(doc["space"]) == set(asdict(RunConfig().space))


def test_unknown_keys_are_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[run]\ntask = 'superres'\nepochz = 3\n")
    with pytest.raises(UsageError, match="epochz"):
        load_config(p)
    p.write_text("[spaec]\n")
    with pytest.raises(UsageError, match="spaec"):
        load_config(p)
    p.write_text("[space]\nratio = [0.5, 1.5]\n")
    with pytest.raises(UsageError, match="ratio"):
        load_config(p)


def test_overrides_beat_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[run]\nbudget = '3M'\nepochs = 7\n")
    cfg = load_config(p, epochs=1)
    assert (cfg.budget, cfg.epochs) == (3_000_000, 1)
    assert cfg.study_name == "superres-fashion-mnist-3M"
    assert cfg.storage_url == "sqlite:///results/superres-fashion-mnist-3M/study.db"


def test_pruner_key_and_the_old_pruning_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[run]\npruner = "none"\n')
    assert load_config(p).pruning == "none" and read_config(p).notes == ()
    p.write_text('[run]\npruning = "psnr-bins"\n')  # the key before it took the option's name
    with pytest.warns(DeprecationWarning, match="the key pruning is now called pruner"):
        assert load_config(p).pruning == "psnr-bins"
    assert read_config(p).notes == (f"{p} [run]: the key pruning is now called pruner, like the option --pruner: "
                                    "rename it",)
    p.write_text('[run]\npruning = "none"\npruner = "none"\n')
    with pytest.raises(UsageError, match="pruning and pruner are the same setting; keep pruner only"):
        read_config(p)
    p.write_text('[run]\npruner = "asha"\n')
    with pytest.raises(UsageError, match="pruner must be one of none, pareto-asha, psnr-bins"):
        read_config(p)


def test_a_file_is_checked_whole_and_names_itself(tmp_path):
    # A value of the right type but out of range is refused with RunConfig's words and the file's name,
    # whatever the command line would override: the file is wrong on its own.
    p = tmp_path / "c.toml"
    p.write_text("[run]\npack_size = -1\n")
    with pytest.raises(UsageError, match=r"c.toml \[run\]: --pack-size must be 0 \(auto\)"):
        read_config(p)


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("2.5", 2.5), (" 600 ", 600.0), (90, 90.0), ("45s", 45.0),
                                          ("90m", 5400.0), ("2h", 7200.0), ("1h30m", 5400.0), ("1.5h", 5400.0)])
def test_durations_in_plain_seconds_or_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "0", "0s", "-5", "90x", "1e3", "nan", "h", "5 m 3"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("field,value", [("trials", 0), ("trials", -3), ("epochs", 0), ("task", "segment"),
                                         ("family", "mlp"), ("device", "tpu"), ("study", "../x"),
                                         ("augment", "rotate")])
def test_bad_values(field, value):
    with pytest.raises(UsageError):
        RunConfig(**{field: value})


@pytest.mark.parametrize("table,line,allowed", [
    ("run", 'trials = "abc"', "trials must be a whole number"),
    ("run", "epochs = 2.5", "epochs must be a whole number"),
    ("run", "seed = true", "seed must be a whole number"),  # TOML's true is not the number 1
    ("run", 'fixed_win = "yes"', "fixed_win must be true or false"),
    ("run", "batch_size = { a = 1 }", "batch_size must be a whole number"),
    ("run", 'task = "segment"', "task must be one of denoise, superres, classify"),
    ("run", 'dataset = "mnits"', "dataset must be one of"),
    ("run", "data_dir = 3", "data_dir must be a string"),
    ("run", "budget = true", "budget must be a parameter count"),
    ("run", "space = { lr = [1e-4, 1e-3] }", "[space] is its own table"),
    ("space", "lr = 5", "lr must be a list of two numbers"),
    ("space", "lr = [1e-3]", "lr must be a list of two numbers"),
    ("space", 'lr = ["a", "b"]', "lr must be a list of two numbers"),
    ("space", "hourglass_depth = [1.5, 4]", "hourglass_depth must be a list of two whole numbers"),
    ("space", "ratio = [0.5, 0.1]", "low <= high"),
    ("space", 'min_fraction = "x"', "min_fraction must be a number"),
])
def test_config_values_are_type_checked(tmp_path, table, line, allowed):
    p = tmp_path / "bad.toml"
    p.write_text(f"[{table}]\n{line}\n")
    with pytest.raises(UsageError) as e:
        load_config(p)
    msg = str(e.value)
    assert allowed in msg and str(p) in msg and f"[{table}]" in msg and "\n" not in msg
    key = line.split(" =")[0]
    assert key in msg


def test_config_numbers_widen_but_never_narrow(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[run]\nnoise_sigma = 1\n[space]\nlr = [1, 2]\nmin_fraction = 1\n")
    cfg = load_config(p)
    assert cfg.noise_sigma == 1.0 and isinstance(cfg.noise_sigma, float)
    assert cfg.space.lr == (1.0, 2.0) and all(isinstance(v, float) for v in cfg.space.lr)


@pytest.mark.slow
def test_config_error_through_the_cli(tmp_path):
    """The real command: one line on stderr naming file, key, value and what is allowed; exit 2."""
    p = tmp_path / "bad.toml"
    p.write_text('[run]\ntrials = "abc"\n')
    r = subprocess.run([sys.executable, "-m", "hgsearch", "run", "--budget", "1M", "--config", str(p)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f'error: {p} [run]: trials = "abc" is a string; trials must be a whole number'
    assert not list(tmp_path.glob("results*"))
