"""Studies on disk: list those under a results directory, find one by name, tidy stale files."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from hgsearch.config import STUDY_DB
from hgsearch.errors import StorageError, UsageError

FIGURES = ("frontier.png", "frontier.svg", "scaling.png", "scaling.svg", "curves.png", "curves.svg")


@dataclass(frozen=True)
class StudyInfo:
    """One study under a results directory, as `show` lists it."""

    name: str
    task: str | None
    dataset: str | None
    budget: int | None
    done: dict[str, int]  # completed trials per family
    changed: datetime.datetime  # last change of its database file

    def to_dict(self) -> dict:
        return {"name": self.name, "task": self.task, "dataset": self.dataset, "budget": self.budget,
                "done": self.done, "changed": self.changed.isoformat(timespec="seconds")}


def _changed(db: Path) -> datetime.datetime:
    """Last change of a SQLite study: the database or its write-ahead log, whichever is newer."""
    times = [p.stat().st_mtime for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return datetime.datetime.fromtimestamp(max(times))


def list_studies(results_dir: str | Path) -> list[StudyInfo]:
    """Every study with a SQLite database under results_dir, most recently changed last."""
    import optuna
    from optuna.trial import TrialState

    from hgsearch.store.schema import SETTINGS_KEY

    out = []
    for db in Path(results_dir).glob("*/study.db"):
        url = f"sqlite:///{db}"
        done: dict[str, int] = {}
        settings: dict = {}
        try:
            for summary in optuna.get_all_study_summaries(storage=url, include_best_trial=False):
                family = summary.study_name.rpartition(".")[2]
                if family not in ("hourglass", "conventional"):
                    continue  # confirm's <study>.seeds
                settings = settings or summary.user_attrs.get(SETTINGS_KEY, {})
                study = optuna.load_study(study_name=summary.study_name, storage=url)
                done[family] = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        except Exception as e:  # one unreadable database must not hide the others
            raise StorageError(f"cannot read {db}: {str(e).splitlines()[0] if str(e) else type(e).__name__}: "
                               "move it away or pass --results-dir") from None
        out.append(StudyInfo(db.parent.name, settings.get("task"), settings.get("dataset"),
                             settings.get("budget"), done, _changed(db)))
    return sorted(out, key=lambda s: s.changed)


def find_study(study: str | None, storage: str | None, results_dir: str | Path) -> tuple[str, Path, str, str | None]:
    """(name, results directory, storage URL, a note saying which study was picked when none was named).

    Without --study, the study changed last under results_dir is picked and the note says so; a
    --study that does not exist there is refused with the names that do.
    """
    from hgsearch.results.trials import locate_study

    if storage is not None:  # a remote storage: the name is checked when the study is read
        return (*locate_study(study, storage, results_dir), None)
    names = sorted(p.parent.name for p in Path(results_dir).glob("*/study.db"))
    if not names:
        named = f"no study {study!r}" if study else "no study"
        raise UsageError(f"{named} under {results_dir}/: there is none there yet; check --results-dir, or "
                         "run `hgsearch run --budget ...` first")
    if study is not None and study not in names:
        raise UsageError(f"no study {study!r} under {results_dir}/: the studies there are {', '.join(names)}")
    name, out_dir, url = locate_study(study, storage, results_dir)
    note = None
    if study is None:
        note = (f"study {name} (the only one under {results_dir}/)" if len(names) == 1 else
                f"study {name}: changed last of the {len(names)} under {results_dir}/ "
                f"({', '.join(names)}); pass --study to pick another")
    return name, out_dir, url, note


def remove_figures(study_dir: str | Path) -> list[Path]:
    """Delete figures of an earlier `frontier --plot`, so no stale figure sits beside fresh CSVs."""
    gone = []
    for name in FIGURES:
        p = Path(study_dir) / name
        if p.is_file():
            p.unlink()
            gone.append(p)
    return gone


def default_study_dir(results_dir: str | Path) -> str:
    """The most recently used study under results_dir, for `frontier` without --study."""
    dbs = sorted(Path(results_dir).glob(f"*/{STUDY_DB}"), key=lambda p: p.stat().st_mtime)
    if not dbs:
        raise UsageError(f"no study found under {results_dir}/: run `hgsearch run --budget ...` first, or pass --study")
    return dbs[-1].parent.name
