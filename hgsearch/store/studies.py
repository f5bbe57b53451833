"""Finding and opening studies: list those under a results directory, find one by name, open it through
the retrying storage, tidy stale files. Every reader of a study (results/, the CLI) comes through here."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from hgsearch.config import STUDY_DB, sqlite_url
from hgsearch.errors import HgsearchError, StorageError, UsageError
from hgsearch.names import FAMILIES
from hgsearch.store.schema import SETTINGS_KEY, finished
from hgsearch.store.storage import make_storage, safe_url
from hgsearch.text import first_line

FIGURES = ("frontier.png", "frontier.svg", "scaling.png", "scaling.svg", "curves.png", "curves.svg",
           "hypervolume.png", "hypervolume.svg")


def study_names(storage: str) -> set[str]:
    """Names of every Optuna study in the storage (a search's are <study>.<family> and <study>.seeds)."""
    try:
        return set(optuna.get_all_study_names(storage=make_storage(storage, switch_to_wal=False)))
    except HgsearchError:
        raise
    except Exception as e:
        raise StorageError(f"cannot read storage {safe_url(storage)}: {first_line(e)}") from None


def open_study(name: str, storage: str) -> optuna.Study:
    """An existing Optuna study, through the storage that waits out database outages (make_storage).

    Reading leaves a SQLite file as it is: it is switched to WAL only when this process writes to it
    (make_storage with its default switch_to_wal).
    """
    return optuna.load_study(study_name=name, storage=make_storage(storage, switch_to_wal=False))


@dataclass(frozen=True)
class StudyInfo:
    """One study under a results directory, as `show` lists it."""

    name: str
    task: str | None
    dataset: str | None
    budget: int | None
    done: dict[str, int]  # finished trials (schema.FINISHED: completed or stopped early) per family
    changed: datetime.datetime  # last change of its database file
    error: str | None = field(default=None)  # why its database could not be read; then nothing else is known

    def to_dict(self) -> dict:
        return {"name": self.name, "task": self.task, "dataset": self.dataset, "budget": self.budget,
                "done": self.done, "changed": self.changed.isoformat(timespec="seconds"), "error": self.error}


def _changed(db: Path) -> datetime.datetime:
    """Last change of a SQLite study: the database or its write-ahead log, whichever is newer."""
    times = [p.stat().st_mtime for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return datetime.datetime.fromtimestamp(max(times))


def _study_info(study_dir: Path) -> StudyInfo:
    url = sqlite_url(study_dir)
    done: dict[str, int] = {}
    settings: dict = {}
    # By family (FAMILIES' order), leaving out confirm's <study>.seeds.
    families = {name.rpartition(".")[2]: name for name in study_names(url)}
    for family in (f for f in FAMILIES if f in families):
        study = open_study(families[family], url)
        settings = settings or study.user_attrs.get(SETTINGS_KEY, {})
        done[family] = finished(study)
    return StudyInfo(study_dir.name, settings.get("task"), settings.get("dataset"), settings.get("budget"), done,
                     _changed(study_dir / STUDY_DB))


def list_studies(results_dir: str | Path) -> list[StudyInfo]:
    """Every study with a SQLite database under results_dir, most recently changed last.

    One unreadable database does not hide the others: it is listed with its error and nothing else.
    """
    out = []
    for db in Path(results_dir).glob(f"*/{STUDY_DB}"):
        try:
            out.append(_study_info(db.parent))
        except Exception as e:
            reason = str(e) if isinstance(e, HgsearchError) else f"cannot read {db}: {first_line(e)}"
            out.append(StudyInfo(db.parent.name, None, None, None, {}, _changed(db), error=reason))
    return sorted(out, key=lambda s: s.changed)


def locate_study(study: str | None, storage: str | None, results_dir: str | Path) -> tuple[str, Path, str]:
    """(study name, its results directory, storage URL) for the commands that read a finished study."""
    name = study or default_study_dir(results_dir)
    out_dir = Path(results_dir) / name
    if storage is None and not (out_dir / STUDY_DB).is_file():
        raise StorageError(f"no study {name!r} under {results_dir}/: check --study or --results-dir")
    return name, out_dir, storage or sqlite_url(out_dir)


def find_study(study: str | None, storage: str | None, results_dir: str | Path) -> tuple[str, Path, str, str | None]:
    """(name, results directory, storage URL, a note saying which study was picked when none was named).

    Without --study, the study changed last under results_dir is picked and the note says so; a
    --study that does not exist there is refused with the names that do.
    """
    if storage is not None:  # a remote storage: the name is checked when the study is read
        return (*locate_study(study, storage, results_dir), None)
    names = sorted(p.parent.name for p in Path(results_dir).glob(f"*/{STUDY_DB}"))
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
