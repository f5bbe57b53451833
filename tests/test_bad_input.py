"""Bad input: one line on stderr naming the problem and the fix, exit 2 (usage) or 1 (runtime), nothing written."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import optuna
import pytest

from tests.conftest import hgsearch


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in sorted(root.rglob("*"))}


@pytest.fixture
def inputs(tiny_idx, tmp_path) -> dict[str, Path]:
    """Broken inputs outside the working directory, so 'nothing written' is checked on a clean tree."""
    d = tmp_path / "in"
    (d / "empty").mkdir(parents=True)
    for name, damage in (("trunc", lambda b: b[: len(b) // 2]), ("magic", lambda b: b"\x12\x34" + b[2:])):
        shutil.copytree(tiny_idx, d / name)
        f = d / name / "train-images-idx3-ubyte.gz"
        f.write_bytes(gzip.compress(damage(gzip.decompress(f.read_bytes()))))
    (d / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"garbage" * 500)
    (d / "a-file").write_text("not a directory")
    configs = {"typo": "[run]\nepochz = 3\n", "string": '[run]\ntrials = "abc"\n', "range": "[run]\npack_size = -1\n",
               "badtoml": "[run\n"}
    for name, text in configs.items():
        (d / f"{name}.toml").write_text(text)
    return {"tiny": tiny_idx, "empty": d / "empty", "trunc": d / "trunc", "magic": d / "magic",
            "corrupt": d / "corrupt.db", "file": d / "a-file", **{name: d / f"{name}.toml" for name in configs}}


CASES = [
    # (arguments, exit code, text the one line must contain); {name} is an `inputs` path
    (["--budget", "0"], 2, "invalid budget '0': it must be a positive parameter count"),
    (["--budget", "-5M"], 2, "invalid budget '-5M'"),
    (["--budget", "5X"], 2, "invalid budget '5X': write it like 500K, 5M"),
    (["--budget", ""], 2, "invalid budget '': write it like"),
    (["--budget", "1e400"], 2, "invalid budget '1e400': over 10^12 parameters"),
    (["--budget", "abc"], 2, "invalid budget 'abc': write it like"),
    (["--budget", "20K", "--data-dir", "{tiny}"], 2, "is below the smallest hourglass/conventional model on this "
                                                    "task (36->144): use --budget 26,390 or more"),
    (["--budget", "3M", "--task", "segment"], 2,
     "Invalid value for '--task': 'segment' is not one of 'denoise', 'superres'"),
    (["--budget", "3M", "--dataset", "nope"], 2, "Invalid value for '--dataset': 'nope' is not one of 'fashion-mnist'"),
    (["--budget", "3M", "--family", "mlp"], 2, "Invalid value for '--family': 'mlp' is not one of 'hourglass'"),
    (["--budget", "3M", "--trials", "0"], 2, "--trials must be at least 1, got 0"),
    (["--budget", "3M", "--trials", "-3"], 2, "--trials must be at least 1, got -3"),
    (["--budget", "3M", "--epochs", "0"], 2, "--epochs must be at least 1, got 0"),
    (["--budget", "3M", "--bogus"], 2, "No such option: --bogus"),
    (["--budget", "3M", "--timeout", "soon"], 2, "invalid duration 'soon': write it like 90 (seconds), 45s, 90m"),
    (["--budget", "3M", "--timeout", "0"], 2, "invalid duration '0': it must be longer than 0 s"),
    (["--budget", "3M", "--config", "{empty}/none.toml"], 2, "none.toml does not exist: check the --config path"),
    (["--budget", "3M", "--config", "{badtoml}"], 2, "badtoml.toml is not valid TOML"),
    (["--budget", "3M", "--config", "{typo}"], 2, "unknown key(s) epochz in {typo} [run]: allowed are"),
    (["--budget", "3M", "--config", "{string}"], 2, '{string} [run]: trials = "abc" is a string; trials must be a'),
    (["--budget", "3M", "--config", "{range}", "--pack-size", "2"], 2,
     "{range} [run]: --pack-size must be 0 (auto), 1 (one trial at a time) or more, got -1"),
    (["--budget", "100K", "--data-dir", "{empty}/missing"], 1, "missing does not exist; put train-images"),
    (["--budget", "100K", "--data-dir", "{empty}"], 1, "empty lacks train-images-idx3-ubyte.gz"),
    (["--budget", "100K", "--data-dir", "{trunc}"], 1, "train-images-idx3-ubyte.gz: truncated"),
    (["--budget", "100K", "--data-dir", "{magic}"], 1, "train-images-idx3-ubyte.gz: not an IDX file"),
    (["--budget", "100K", "--data-dir", "{tiny}", "--storage", "notaurl"], 1, "invalid --storage URL: give an"),
    (["--budget", "100K", "--data-dir", "{tiny}", "--storage", "postgresql://u:secret@127.0.0.1:1/db"], 1,
     "cannot open storage postgresql://u:***@127.0.0.1:1/db: "),
    (["--budget", "100K", "--data-dir", "{tiny}", "--storage", "sqlite:///{corrupt}"], 1,
     "corrupt.db: file is not a database (corrupted or not a SQLite file); move it away"),
    (["--budget", "100K", "--data-dir", "{tiny}", "--results-dir", "{file}/results"], 1,
     "(Not a directory): pass a writable --results-dir"),
]


@pytest.mark.parametrize("args,code,text", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_run_bad_input(args, code, text, inputs, tmp_path, cli):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [a.format(**inputs) for a in ["run", *args, *([] if "--dataset" in args else ["--dataset", "idx"])]]
    before = tree(tmp_path)
    rc, out, err = cli(*args, cwd=cwd)
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and text.format(**inputs) in lines[0] and lines[0].startswith("error: ")
    assert "Traceback" not in out + err and "secret" not in out + err
    assert tree(tmp_path) == before  # nothing written: no results dir, no database, no checkpoint


def test_frontier_of_a_missing_study(tmp_path, cli):
    rc, _, err = cli("frontier", "--study", "nope", cwd=tmp_path)
    assert rc == 2 and err.strip() == ("error: no study 'nope' under results/: there is none there yet; check "
                                       "--results-dir, or run `hgsearch run --budget ...` first")
    assert list(tmp_path.iterdir()) == []


def test_frontier_of_a_study_without_completed_trials(tmp_path, cli):
    (tmp_path / "results" / "s").mkdir(parents=True)
    study = optuna.create_study(study_name="s.hourglass", storage=f"sqlite:///{tmp_path}/results/s/study.db",
                                directions=["minimize", "maximize"])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    before = tree(tmp_path)
    rc, _, err = cli("frontier", "--study", "s", cwd=tmp_path)
    assert rc == 2 and "study 's' has no completed trial yet" in err and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_frontier_of_a_corrupted_database(tmp_path, cli):
    (tmp_path / "results" / "s").mkdir(parents=True)
    (tmp_path / "results" / "s" / "study.db").write_bytes(b"\x00" * 4096)
    before = tree(tmp_path)
    rc, _, err = cli("frontier", "--study", "s", cwd=tmp_path)
    assert rc == 1 and "cannot read storage sqlite:///results/s/study.db" in err
    assert len(err.strip().splitlines()) == 1 and tree(tmp_path) == before


def test_a_database_of_an_older_optuna_schema_is_refused_with_the_upgrade_command(tiny_idx, tmp_path, cli):
    """hgsearch checks the schema itself (storage._open_rdb: Optuna's check pins two connections behind a
    pooler); a database one alembic revision behind is refused with the command that upgrades it."""
    import sqlite3

    db = tmp_path / "old.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    previous = storage.get_all_versions()[1]  # walk_revisions: the head first
    storage.engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (previous,))
    rc, out, err = cli("run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx), "--storage",
                       f"sqlite:///{db}", "--trials", "1", "--epochs", "1", cwd=tmp_path)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"has Optuna schema {previous}" in err and f"optuna storage upgrade --storage 'sqlite:///{db}'" in err, err
    with sqlite3.connect(db) as con:  # left as it was: no trial, no study, the old revision
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(previous,)]
        assert con.execute("SELECT COUNT(*) FROM studies").fetchone() == (0,)


@pytest.mark.slow
def test_real_process_bad_budget_and_password(tiny_idx, tmp_path):
    """Two of the above through the console entry in a real process: same line, same code, no traceback."""
    res = hgsearch("run", "--budget", "5X", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: invalid budget '5X': write it like 500K, 5M, 1.5M, 5e6, 2500000 or 2,500,000"]
    res = hgsearch("run", "--budget", "100K", "--dataset", "idx", "--data-dir", str(tiny_idx),
                   "--storage", "postgresql://u:secret@127.0.0.1:1/db", cwd=tmp_path)
    assert res.returncode == 1 and "secret" not in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []
