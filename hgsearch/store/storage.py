"""Opening a study storage: one retrying storage per URL and process, SQLite tuned for workers, safe URLs.

SQLite is the single-machine default (WAL and a busy timeout keep several workers on one file free
of "database is locked"); any Optuna RDB URL works, PostgreSQL for several hosts.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from hgsearch.config import RunConfig
from hgsearch.errors import HgsearchError, StorageError
from hgsearch.store import optuna_seam as seam
from hgsearch.store.resilient import ResilientStorage, wait_out
from hgsearch.text import first_line

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats


GRACE_PERIOD = 60  # a RUNNING trial whose last heartbeat is older than this is stale


SQLITE_TIMEOUT = 60  # seconds a SQLite writer waits for the lock instead of failing "database is locked"

# Hosts starting at once on an empty server database race to create Optuna's tables; the losers retry
# after a random pause, so one or two attempts settle it and five leave a wide margin.
CREATE_ATTEMPTS = 5
CREATE_PAUSE = (0.2, 1.0)  # seconds, drawn uniformly: the hosts' retries do not collide again


def safe_url(url: str) -> str:
    """The storage URL with any password masked, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def scrubbed(e: BaseException, url: str) -> str:
    """An error's first line with the storage URL and its password removed (drivers may echo them)."""
    text = first_line(e).replace(url, safe_url(url))
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = re.search(r"://[^:/@]*:([^@]*)@", url)
        password = password.group(1) if password else None
    return text.replace(str(password), "***") if password else text


_storages: dict[str, ResilientStorage] = {}  # by _absolute(url)
_in_wal: set[str] = set()  # SQLite URLs (_absolute) this process has switched to WAL


def _absolute(url: str) -> str:
    """A SQLite file URL with its path made absolute; any other URL as it is.

    SQLite resolves a relative path when it connects, so a pooled connection opened after a chdir (a
    notebook, the tests' in-process commands) would reach another file; and one cached storage per
    file needs one key per file.
    """
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # make_storage words the error
        return url
    if not u.database or u.database == ":memory:" or u.database.startswith("file:"):
        return url
    return u.set(database=str(Path(u.database).resolve())).render_as_string(hide_password=False)


def _driver(url: str) -> str | None:
    """The SQLAlchemy driver a URL uses (psycopg, psycopg2, pysqlite...), None when it does not parse."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).get_dialect().driver
    except Exception:  # unparseable or driver missing: make_storage words the error when it opens
        return None


_CREATE_RACE = re.compile(r"UniqueViolation|DuplicateTable|already exists|duplicate key", re.I)


def _prepare_sqlite(url: str, wal: bool) -> None:
    """Check a SQLite file is a database and, with wal, switch it to WAL (readers never block the writer).

    WAL plus a busy timeout (SQLITE_TIMEOUT) is what keeps several workers on one SQLite file free of
    "database is locked" (measured in notes/search-api.md). WAL needs a local filesystem: use a
    server database (PostgreSQL) for hosts that share a study. Without wal the file is only read
    (a study that `frontier` or `show` reads is left as it is).
    """
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    p = Path(path)
    if not p.parent.is_dir():
        raise StorageError(f"cannot open storage {safe_url(url)}: directory {p.parent} does not exist")
    try:
        con = sqlite3.connect(p, timeout=SQLITE_TIMEOUT)
        try:
            con.execute("PRAGMA journal_mode=WAL" if wal else "PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(
            f"cannot {'open' if wal else 'read'} storage {safe_url(url)}: {e} (corrupted or not a SQLite file); "
            "move it away or pass a new --study / --storage"
        ) from None


def _open_rdb(url: str, kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage, its schema version checked with one database connection at a time.

    Optuna's own check (check_table_schema_compatibility) reads the version inside a session and opens a
    second connection for alembic's revision while the first is still in its transaction. Behind a
    pooler in transaction mode that pins one server connection per opening client while it waits
    for another: as many clients opening at once as the pool has connections deadlock until the
    pooler's query_wait_timeout (pgbouncer: 120 s). Found by bench/load_test.py; tests/test_load.py
    opens a storage through a pool of one server connection.
    """
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                                         skip_compatibility_check=True, **kwargs)
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        if current in storage.get_all_versions():
            fix = f"upgrade it first: optuna storage upgrade --storage '{safe_url(url)}'"
        else:  # written by a newer Optuna than this one
            fix = "install the Optuna release that wrote it (pip install -U optuna)"
        raise StorageError(f"storage {safe_url(url)} has Optuna schema {current}, this Optuna "
                           f"{optuna.__version__} reads {head}: {fix}")
    return storage


def make_storage(url: str, retry_seconds: float | None = None, *, switch_to_wal: bool = True) -> ResilientStorage:
    """The storage object (one per URL and process), with heartbeats and SQLite tuned for workers.

    It retries its calls through a database outage of up to retry_seconds (hgsearch.store.resilient;
    None: RunConfig's default for a new one, the limit already set for one this process opened).
    switch_to_wal=False is for readers (store.studies): a SQLite file is read as it is, not switched
    to WAL, so reading a study changes none of its files.
    """
    sqlite, key = url.startswith("sqlite"), _absolute(url)
    if key in _storages:
        if sqlite and switch_to_wal and key not in _in_wal:  # opened by a reader, now written
            _prepare_sqlite(url, wal=True)
            _in_wal.add(key)
        if retry_seconds is not None:
            _storages[key].limit = retry_seconds
        return _storages[key]
    retry_seconds = RunConfig.storage_retry_seconds if retry_seconds is None else retry_seconds
    # pool_pre_ping: a pooled connection the server dropped (restart, failover, idle timeout) is
    # noticed and replaced before use, instead of failing the next call.
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        if sqlite:
            _prepare_sqlite(url, wal=switch_to_wal)
            if switch_to_wal:
                _in_wal.add(key)
            kwargs["engine_kwargs"]["connect_args"] = {"timeout": SQLITE_TIMEOUT}
        elif _driver(url) == "psycopg":
            # No server-side prepared statements: behind a pooler in transaction mode (pgbouncer before
            # 1.21, the way past the connection limit: docs/cluster.md) the next transaction may run on
            # another server connection, where psycopg's "_pg3_0" is missing or already taken.
            kwargs["engine_kwargs"]["connect_args"] = {"prepare_threshold": None}
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental" (stable since 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    # a worker may start mid-outage: opening waits it out like any storage call
                    storage = wait_out(lambda: _open_rdb(key, kwargs), safe_url(url), retry_seconds)
                break
            except Exception as e:
                # Optuna creates its tables without a lock: hosts starting at once on an empty
                # server database can collide (UniqueViolation, DuplicateTable). The loser retries.
                if attempt == CREATE_ATTEMPTS - 1 or not _CREATE_RACE.search(repr(e) + repr(e.__cause__)):
                    raise
                time.sleep(random.uniform(*CREATE_PAUSE))
    except HgsearchError:
        raise
    except Exception as e:  # SQLAlchemy, driver import and URL errors all land here
        if safe_url(url).startswith("<"):
            raise StorageError("invalid --storage URL: give an Optuna RDB URL such as "
                               "sqlite:///results/study.db or postgresql://user@host/db") from None
        raise StorageError(f"cannot open storage {safe_url(url)}: {scrubbed(e, url)}; check the URL, the "
                           "server and its driver (pip install hgsearch[postgres])") from None
    # Optuna puts its cache in front of an RDBStorage it is given; given this wrapper, it does not.
    _storages[key] = ResilientStorage(seam.CachedStorage(storage), safe_url(url), retry_seconds,
                                      GRACE_PERIOD)
    return _storages[key]
