"""A study storage that rides through database outages: calls retried with backoff, writes made safe to repeat.

Every storage call the search makes (claims, heartbeats, tells, attributes, reads) goes through
ResilientStorage. A call that fails because the database is away (server restarted, failed over,
network cut) is retried with exponential backoff and jitter until it succeeds or the outage has
lasted `limit` seconds; then one StorageError names the storage (password masked) and the same
command resumes later. Training goes on meanwhile: only the calls that need the database wait.

Repeating a write is safe because the writes whose answer can be lost after their commit are made
idempotent here (see create_new_trial and set_trial_state_values); the others overwrite a value
with the same value, or (set_trial_param) ignore the duplicate key.
"""

from __future__ import annotations

import copy
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from hgsearch.errors import StorageError
from hgsearch.store import optuna_seam as seam
from hgsearch.store.schema import REASON_ATTR

T = TypeVar("T")

FIRST_WAIT = 0.5  # seconds before the first retry; doubled after each failure ...

MAX_WAIT = 5.0  # ... up to this, so a database that is back is noticed within seconds

CLAIM_KEY = "hgsearch_claim"  # system attr: a token unique to each created trial, to find it after a lost answer

# Errors that mean "the database or the way to it is away", not "the request is wrong".
_TRANSIENT = (sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.InterfaceError)

_listener: list[Callable[[str], None]] = []



def set_listener(note: Callable[[str], None] | None) -> None:
    """Where outage notes go (the search's reporter); called from the main thread only, never a heartbeat's."""
    _listener.clear()
    if note is not None:
        _listener.append(note)


def _chain(e: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return seen


def disk_full(e: BaseException) -> bool:
    """SQLite's "database or disk is full": waiting does not help, so it is not retried."""
    return any("disk is full" in str(x) for x in _chain(e))


# The server is at its connection limit (PostgreSQL: max_connections; MySQL: max_connections): a
# transient state like an outage, waited out the same way, but with its own advice, since a wrong URL
# is not the cause (Optuna words it "An exception is raised during the commit" when it hits it there).
_AT_LIMIT = re.compile(r"too many clients|connection slots are reserved|too many connections", re.I)

LIMIT_ADVICE = ("raise the server's max_connections, or connect through a pooler "
                "(pgbouncer in transaction mode: docs/cluster.md)")


def at_connection_limit(e: BaseException) -> bool:
    """True when the server refused a connection because all its connection slots are taken."""
    return any(_AT_LIMIT.search(str(x)) for x in _chain(e))


# psycopg's word for a connection out of step with its server: a command got two answers (or none).
# Through pgbouncer a server that shuts down mid-transaction sends its error and then the reply to
# BEGIN, COMMIT or a savepoint's RELEASE; psycopg raises InternalError, and SQLAlchemy flags it as a
# disconnect only when the socket is already closed (not yet, while a new connection is initialised).
# The connection is lost all the same, and a lost COMMIT is what the retries are built for.
_OUT_OF_STEP = re.compile(r"received \d+ results from command")


def transient(e: BaseException) -> bool:
    """True for a lost or refused database connection, also inside Optuna's StorageInternalError."""
    if disk_full(e):
        return False
    return any(isinstance(x, _TRANSIENT) or (isinstance(x, sa_exc.DBAPIError) and x.connection_invalidated)
               or _OUT_OF_STEP.search(str(x)) for x in _chain(e))


def _first_line(e: BaseException) -> str:
    cause = next((x for x in _chain(e) if isinstance(x, sa_exc.DBAPIError) and x.orig is not None), e)
    text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return f"{type(getattr(cause, 'orig', None) or cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def _retried(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda _again: getattr(self._inner, name)(*args, **kwargs))

    method.__name__ = name
    return method


class Outages:
    """Retries calls through an outage of up to `limit` seconds and notes when it starts and ends.

    `where` is the storage URL with its password masked, for messages. After an outage outlasted
    the limit, later calls (closing the trial on the way out) try once instead of waiting again.
    """

    def __init__(self, where: str, limit: float) -> None:
        self.where, self.limit = where, limit
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time the current outage was first seen
        self._back_at: float | None = None  # monotonic time the last outage ended
        self._gave_up = False
        self._notes: list[str] = []  # noted in any thread, handed to the listener from the main thread

    def __getstate__(self) -> dict[str, Any]:
        # Unpickling an RDBStorage connects to the database: a study sent to another process (a
        # worker's "done" event) must be dropped there, not reconnect through a flaky network.
        raise TypeError("a storage does not cross processes: open it with hgsearch.store.storage.make_storage")

    def _retry(self, attempt: Callable[[bool], T]) -> T:
        """attempt(again) until it succeeds; again is True once an attempt failed (its commit may have landed)."""
        deadline: float | None = None
        wait = FIRST_WAIT
        again = False
        while True:
            try:
                result = attempt(again)
            except Exception as e:
                if disk_full(e):
                    raise StorageError(f"storage {self.where} is full ({_first_line(e)}): free space on its "
                                       "disk, then run the same command again") from None
                if not transient(e):
                    raise
                now = time.monotonic()
                self._went_down(now, e)
                if deadline is None:
                    deadline = now + (0.0 if self._gave_up else self.limit)
                if now >= deadline:
                    self._gave_up = True
                    self._flush()
                    if at_connection_limit(e):
                        raise StorageError(
                            f"storage {self.where} stayed at its connection limit for over {self.limit:g} s "
                            f"({_first_line(e)}): {LIMIT_ADVICE}; then run the same command again") from None
                    raise StorageError(
                        f"storage {self.where} unreachable for over {self.limit:g} s ({_first_line(e)}): run "
                        "the same command again when the database is back (storage_retry_seconds sets "
                        "how long to wait)") from None
                time.sleep(min(wait * random.uniform(0.5, 1.0), deadline - now))  # jitter: hosts do not retry in step
                wait = min(2 * wait, MAX_WAIT)
                again = True
                continue
            self._came_back()
            if self._notes:
                self._flush()
            return result

    def _went_down(self, now: float, e: BaseException) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = now
        if first and at_connection_limit(e):
            self._note(f"storage {self.where} is at its connection limit ({_first_line(e)}); waiting for a free "
                       f"connection for up to {self.limit:g} s: {LIMIT_ADVICE}")
        elif first:
            self._note(f"storage {self.where} unreachable ({_first_line(e)}); training goes on, storage calls "
                       f"are retried for up to {self.limit:g} s")

    def _came_back(self) -> None:
        if self._down_since is None:  # the common case, without taking the lock
            return
        with self._lock:
            since, self._down_since = self._down_since, None
            if since is None:
                return
            self._back_at = time.monotonic()
            self._gave_up = False
        self._note(f"storage {self.where} is back after {self._back_at - since:.1f} s")

    def _note(self, message: str) -> None:
        with self._lock:
            self._notes.append(message)
        self._flush()

    def _flush(self) -> None:
        if not _listener or threading.current_thread() is not threading.main_thread():
            return  # a heartbeat thread's notes wait for the main thread's next storage call
        with self._lock:
            notes, self._notes = self._notes, []
        for message in notes:
            _listener[0](message)


# A server that exists but is restarting or cut off, as opposed to a wrong URL (refused, unknown host,
# bad password), which opening the storage reports at once.
_PASSING = re.compile(r"shutting down|starting up|recovery mode|closed the connection|connection reset|"
                      r"terminating connection|timed out|timeout|" + _OUT_OF_STEP.pattern, re.I)


REACHED_ENV = "HGSEARCH_STORAGE_REACHED"  # "1" in a worker started once another worker had opened the storage


def wait_out(call: Callable[[], T], where: str, limit: float) -> T:
    """call() (opening a storage) retried while the server is restarting or cut off, up to limit seconds.

    Also while it refuses connections, when this process is a worker started after another one
    opened the storage (REACHED_ENV): then the URL is right and the server is away; and while the
    server is at its connection limit (the URL is right, a slot frees when another client leaves).
    """
    reached = os.environ.get(REACHED_ENV) == "1"

    def attempt(_again: bool) -> T:
        try:
            return call()
        except Exception as e:
            if (transient(e) and not reached and not at_connection_limit(e)
                    and not any(_PASSING.search(str(x)) for x in _chain(e))):
                raise _WrongPlace(e) from None
            raise

    try:
        return Outages(where, limit)._retry(attempt)
    except _WrongPlace as e:
        raise e.error from None


class _WrongPlace(Exception):
    """Carries an opening error that waiting will not fix past the retry loop."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class ResilientStorage(Outages, BaseStorage, seam.BaseHeartbeat):
    """Wraps Optuna's storage (an RDBStorage behind its cache) and retries every call through outages."""

    def __init__(self, inner: BaseStorage, where: str, limit: float, grace_period: float | None = None) -> None:
        super().__init__(where, limit)
        self._inner = inner
        self._grace_period = grace_period

    # Writes whose lost answer would otherwise count a trial twice.

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Create a trial carrying a unique token; after a failed attempt, look for the token before creating again.

        Optuna's RDBStorage also retries a failed commit on its own, so after any call the trials
        with this token are checked: extra copies (commits whose answer was lost) are failed.
        """
        token = uuid.uuid4().hex
        template = copy.deepcopy(template_trial) if template_trial is not None else \
            optuna.trial.create_trial(state=TrialState.RUNNING)
        template.system_attrs = {**template.system_attrs, CLAIM_KEY: token}

        def attempt(again: bool) -> int:
            if again:
                mine = self._with_token(study_id, token)
                if mine:
                    return seam.trial_id(mine[0])
            return self._inner.create_new_trial(study_id, template)

        trial_id = self._retry(attempt)
        mine = self._retry(lambda _again: self._with_token(study_id, token))
        for extra in mine:
            if seam.trial_id(extra) != trial_id:
                self._retry(lambda _again, t=extra: self._drop_copy(t, trial_id))
        return trial_id

    def _with_token(self, study_id: int, token: str) -> list[FrozenTrial]:
        return [t for t in self._inner.get_all_trials(study_id, deepcopy=False)
                if t.system_attrs.get(CLAIM_KEY) == token]

    def _drop_copy(self, trial: FrozenTrial, kept: int) -> None:
        try:
            self._inner.set_trial_user_attr(seam.trial_id(trial), REASON_ATTR,
                                            f"duplicate of trial id {kept}, created by a retried write")
            self._inner.set_trial_state_values(seam.trial_id(trial), state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # already failed by an earlier attempt of this call

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's compare-and-set, where a repeated COMPLETE that finds its own values stored is a success.

        Only this trial's worker tells COMPLETE, so COMPLETE with our values means our earlier
        attempt landed. A repeated FAIL or RUNNING is not taken as ours (another worker may have
        closed or claimed the trial meanwhile): it answers as Optuna does, which at worst costs a
        retry (no requeue) or leaves a RUNNING trial without a worker, reaped after the grace period.
        """

        def attempt(again: bool) -> bool:
            try:
                return self._inner.set_trial_state_values(trial_id, state=state, values=values)
            except UpdateFinishedTrialError:
                if again and state == TrialState.COMPLETE and values is not None:
                    stored = self._inner.get_trial(trial_id)
                    if stored.state == TrialState.COMPLETE and stored.values == [float(v) for v in values]:
                        return True
                raise

        return self._retry(attempt)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, except right after an outage: heartbeats missed while the database was
        away say nothing about their workers, which beat again within seconds of its return."""
        stale = self._retry(lambda _again: self._inner._get_stale_trial_ids(study_id))
        grace = self._grace_period or 2 * (self.get_heartbeat_interval() or 0)
        if self._back_at is not None and time.monotonic() - self._back_at < grace:
            return []
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._inner.get_heartbeat_stale_trial_callback()

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._retry(lambda _again: self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states))

    def remove_session(self) -> None:
        self._inner.remove_session()

    # Reads, and writes that are safe to repeat as they are.
    create_new_study = _retried("create_new_study")
    delete_study = _retried("delete_study")
    set_study_user_attr = _retried("set_study_user_attr")
    set_study_system_attr = _retried("set_study_system_attr")
    get_study_id_from_name = _retried("get_study_id_from_name")
    get_study_name_from_id = _retried("get_study_name_from_id")
    get_study_directions = _retried("get_study_directions")
    get_study_user_attrs = _retried("get_study_user_attrs")
    get_study_system_attrs = _retried("get_study_system_attrs")
    get_all_studies = _retried("get_all_studies")
    set_trial_param = _retried("set_trial_param")
    get_trial_id_from_study_id_trial_number = _retried("get_trial_id_from_study_id_trial_number")
    get_trial_number_from_id = _retried("get_trial_number_from_id")
    get_trial_param = _retried("get_trial_param")
    set_trial_intermediate_value = _retried("set_trial_intermediate_value")  # an upsert: a repeat writes the same
    set_trial_user_attr = _retried("set_trial_user_attr")
    set_trial_system_attr = _retried("set_trial_system_attr")
    get_trial = _retried("get_trial")
    get_best_trial = _retried("get_best_trial")
    record_heartbeat = _retried("record_heartbeat")
