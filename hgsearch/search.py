"""Studies, storage and resume: one Optuna study per family in one storage, run to N completed trials.

Guarantees of run_search (one process, or any number of processes/hosts on one storage):
- each family ends with exactly cfg.trials COMPLETE trials (never more: see _claim);
- a trial cut off (kill -9, Ctrl-C, lost host) is failed with its reason and queued again with the
  same configuration (up to MAX_RETRIES times); the retry continues from the trial's last
  per-epoch checkpoint (hgsearch.checkpoint), so the result is the one an uninterrupted run gives;
- a RUNNING trial is considered dead when its worker's process is gone (same host: checked at
  once) or its heartbeat is older than GRACE_PERIOD seconds (any host), and is then retried as above.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hgsearch import checkpoint
from hgsearch import space as space_mod
from hgsearch.config import RunConfig
from hgsearch.data import load_dataset
from hgsearch.errors import HgsearchError, StorageError, StudyMismatchError, TrialFailed, UsageError
from hgsearch.models import FAMILIES, ArchSpec
from hgsearch.tasks import TaskData, prepare
from hgsearch.train import TrainResult, resolve_device, train

# hgsearch reports through its own display; Optuna's per-trial INFO lines would interleave with it.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DIRECTIONS = ["minimize", "maximize"]  # (parameter count, validation PSNR)
METRIC_NAMES = ["params", "psnr_val"]
SETTINGS_KEY = "hgsearch_settings"
MAX_CONSECUTIVE_FAILURES = 10  # a study whose trials all fail is misconfigured, not unlucky
MAX_RETRIES = 3  # a configuration cut off more often than this (e.g. it gets the process OOM-killed) is dropped
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a RUNNING trial whose last heartbeat is older than this is stale
POLL_SECONDS = 2.0  # how often a worker looks again while other workers hold the last trials
SQLITE_TIMEOUT = 60  # seconds a SQLite writer waits for the lock instead of failing "database is locked"
WORKER_ATTR = "worker"  # user attr: the process that runs a RUNNING trial (host, boot, pid, start)
RETRY_ATTR = "retry_of"  # user attr: numbers of the earlier, cut-off trials of this configuration
# The attributes that define a trial's configuration: copied to its retry. Results are not.
CONFIG_ATTRS = ("family", "d_in", "d_out", "width", "bottleneck", "depth", "fixed_win", "params",
                "trainable_params", "lr", "seed", "epochs")
PAUSE_ENV = "HGSEARCH_TEST_PAUSE_AT"

# reporter(event, info): the CLI's live display listens; the library never prints.
Reporter = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


def family_study_name(study: str, family: str) -> str:
    return f"{study}.{family}"


def safe_url(url: str) -> str:
    """The storage URL with any password masked, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable storage URL>"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _scrubbed(e: BaseException, url: str) -> str:
    """An error's first line with the storage URL and its password removed (drivers may echo them)."""
    text = _first_line(e).replace(url, safe_url(url))
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = re.search(r"://[^:/@]*:([^@]*)@", url)
        password = password.group(1) if password else None
    return text.replace(str(password), "***") if password else text


# ---------------------------------------------------------------- stopping on signals

class Stopped(KeyboardInterrupt):
    """Raised at the next safe point after SIGINT/SIGTERM (or at once on the second signal)."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


_stop: list[str] = []  # the first stop signal's name, once one arrived


def request_stop(signame: str = "SIGINT") -> None:
    """Ask run_search to stop at its next safe point (between steps, epochs or trials)."""
    if not _stop:
        _stop.append(signame)


def check_stop() -> None:
    if _stop:
        raise Stopped(_stop[0])


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[str], None] | None = None) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the current step, close the trial (queued for retry), stop.

    A second one raises Stopped at once, wherever the main thread is; the storage stays consistent
    (database transactions are atomic) and anything left RUNNING is retried by the next run, exactly
    as after kill -9. Main thread only (Python's signal rule).
    """

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _stop:
            raise Stopped(name)
        request_stop(name)
        if on_first is not None:
            on_first(name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop.clear()


_trials_run = [0]  # trials this process has started, for the test hook


def _pause_at(point: str) -> None:
    """Test hook: with HGSEARCH_TEST_PAUSE_AT=<point>[:<k>], print a marker and wait there, in the k-th
    trial this process runs (default 1), so a test can kill the process at a known place. Points:
    claimed (no configuration stored yet), epoch (mid-epoch, a checkpoint on disk), eval (training
    done, evaluation next), complete (told COMPLETE, checkpoint not yet removed). Returns on a stop."""
    want = os.environ.get(PAUSE_ENV)
    if not want or want.partition(":")[0] != point or int(want.partition(":")[2] or 1) != _trials_run[0]:
        return
    os.environ.pop(PAUSE_ENV)  # once per process
    os.write(2, f"HGSEARCH_PAUSED {point}\n".encode())
    while not _stop:
        time.sleep(0.05)


# ---------------------------------------------------------------- storage and studies

_storages: dict[str, optuna.storages.RDBStorage] = {}
_CREATE_RACE = re.compile(r"UniqueViolation|DuplicateTable|already exists|duplicate key", re.I)


def _prepare_sqlite(url: str) -> None:
    """Check a SQLite file is a database and switch it to WAL (readers never block the writer).

    WAL plus a 60 s busy timeout is what keeps several workers on one SQLite file free of
    "database is locked" (measured in notes/search-api.md). WAL needs a local filesystem: use a
    server database (PostgreSQL) for hosts that share a study.
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
            con.execute("PRAGMA journal_mode=WAL").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(
            f"cannot open storage {safe_url(url)}: {e} (corrupted or not a SQLite file); move it away "
            "or pass a new --study / --storage"
        ) from None


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """The run's storage object (one per URL and process), with heartbeats and SQLite tuned for workers."""
    if url in _storages:
        return _storages[url]
    kwargs: dict[str, Any] = {}
    try:
        if url.startswith("sqlite"):
            _prepare_sqlite(url)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental" (stable since 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, **kwargs
                    )
                break
            except Exception as e:
                # Optuna creates its tables without a lock: hosts starting at once on an empty
                # server database can collide (UniqueViolation, DuplicateTable). The loser retries.
                if attempt == 4 or not _CREATE_RACE.search(repr(e) + repr(e.__cause__)):
                    raise
                time.sleep(random.uniform(0.2, 1.0))
    except HgsearchError:
        raise
    except Exception as e:  # SQLAlchemy, driver import and URL errors all land here
        if safe_url(url).startswith("<"):
            raise StorageError("invalid --storage URL: give an Optuna RDB URL such as "
                               "sqlite:///results/study.db or postgresql://user@host/db") from None
        raise StorageError(f"cannot open storage {safe_url(url)}: {_scrubbed(e, url)}; check the URL, the "
                           "server and its driver (pip install hgsearch[postgres])") from None
    _storages[url] = storage
    return storage


# Settings added after studies already existed, with the value those studies implicitly used.
ADDED_SETTINGS = {"augment": "none", "train_size": 0}


def settings(cfg: RunConfig, data: TaskData, family: str) -> dict[str, Any]:
    """The settings that define a study: resuming with different ones would mix incomparable trials.

    Not here, so free to change between runs: --trials, --device, --results-dir, --data-dir (the
    data's checksum is here), --storage, the display, and the number of workers.
    """
    return {
        "task": cfg.task,
        "dataset": cfg.dataset,
        "dataset_checksum": data.checksum,
        "budget": cfg.budget,
        "epochs": cfg.epochs,
        "family": family,
        "fixed_win": cfg.fixed_win,
        "augment": cfg.augment,
        "train_size": cfg.train_size,
        "batch_size": cfg.batch_size,
        "val_size": cfg.val_size,
        "noise_sigma": cfg.noise_sigma if cfg.task == "denoise" else None,
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg.space).items()},
        "seed": cfg.seed,
        "protocol": "AdamW(wd=0.01), linear decay to 0, MSE on sigmoid, PSNR per batch of 128",
        "d_in": data.d_in,
        "d_out": data.d_out,
    }


def _make_study_dir(cfg: RunConfig) -> None:
    """Create results/<study> (SQLite file, checkpoints); an unwritable place fails early and clearly."""
    try:
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(cfg.study_dir, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise StorageError(f"cannot create {cfg.study_dir} ({e.strerror}): pass a writable --results-dir") from None


def _sampler(cfg: RunConfig, family: str, n_trials: int) -> optuna.samplers.BaseSampler:
    # Seeded from the run seed and the number of trials already in the study, afresh before each
    # ask: a resumed run does not replay start-up configurations it already tried, and workers that
    # ask one after the other get different configurations.
    return optuna.samplers.TPESampler(
        seed=(cfg.seed * 1_000_003 + FAMILIES.index(family) * 7919 + n_trials) % 2**32,
        multivariate=True,
        n_startup_trials=10,
    )


def open_studies(cfg: RunConfig, families: list[str], data: TaskData) -> dict[str, optuna.Study]:
    """Create or resume each family's study; refuse, before writing anything, to resume with other settings."""
    url = cfg.storage_url
    if cfg.storage is None:
        _make_study_dir(cfg)  # holds the SQLite file
    storage = make_storage(url)
    try:
        names = set(optuna.get_all_study_names(storage=storage))
        diffs: dict[str, str] = {}
        for fam in families:
            name = family_study_name(cfg.study_name, fam)
            if name not in names:
                continue
            stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SETTINGS_KEY) or {}
            wanted = settings(cfg, data, fam)
            for k in [*wanted, *(k for k in stored if k not in wanted)]:
                if stored.get(k, ADDED_SETTINGS.get(k)) != wanted.get(k):
                    diffs.setdefault(k, f"{k} (study: {stored.get(k)!r}, now: {wanted.get(k)!r})")
        if diffs:
            new = next(f"{cfg.study_name}-{i}" for i in range(2, 10**6)
                       if not any(n.startswith(f"{cfg.study_name}-{i}.") for n in names))
            raise StudyMismatchError(
                f"study {cfg.study_name!r} was created with other settings: {'; '.join(diffs.values())}; "
                f"rerun with the original settings to resume it, or start a new study with --study {new}"
            )
        if cfg.storage is not None:
            _make_study_dir(cfg)  # holds the checkpoints
        studies = {}
        for fam in families:
            name = family_study_name(cfg.study_name, fam)
            study = optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS,
                                        sampler=_sampler(cfg, fam, 0), load_if_exists=True)
            if SETTINGS_KEY not in study.user_attrs:
                study.set_user_attr(SETTINGS_KEY, settings(cfg, data, fam))
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, also under pytest
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(METRIC_NAMES)
            studies[fam] = study
    except HgsearchError:
        raise
    except Exception as e:
        raise StorageError(f"cannot use storage {safe_url(url)}: {_scrubbed(e, url)}") from None
    return studies


def open_study(cfg: RunConfig, family: str, data: TaskData, *, create: bool = True) -> optuna.Study:
    """One family's study (see open_studies)."""
    return open_studies(cfg, [family], data)[family]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


# ---------------------------------------------------------------- workers, heartbeats, stale trials

def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a live pid from a reused one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _worker_gone(worker: Any) -> bool:
    """True when the worker ran on this machine and its process no longer exists (no need to wait)."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False  # another machine: only its heartbeat can tell
    if worker.get("boot") != _boot_id():
        return True  # this machine rebooted since
    if worker.get("pid") == os.getpid():
        return False
    if worker.get("start") is None or not Path("/proc").is_dir():
        try:
            os.kill(int(worker["pid"]), 0)
            return False
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError):
            return False
    return _proc_start(int(worker["pid"])) != worker["start"]


class _Heartbeat:
    """Records a trial's heartbeat every HEARTBEAT_INTERVAL s from a daemon thread.

    We use ask/tell, not study.optimize (which runs Optuna's own heartbeat thread), because the run
    loop must count and claim a trial before asking (no overshoot with many workers), queue a
    cut-off trial for retry with its checkpoint, and stop between steps on a signal. Unlike Optuna's
    thread, this one is a daemon (a hung storage cannot keep a stopping process alive) and survives
    transient storage errors (a missed beat is retried next interval).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stopped.wait(HEARTBEAT_INTERVAL):
                return

    def start(self) -> "_Heartbeat":
        self.storage.record_heartbeat(self.trial_id)  # the first beat before any work
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()


def _close(study: optuna.Study, trial: FrozenTrial, reason: str, *, retry: bool) -> tuple[bool, str]:
    """Fail a RUNNING trial with its reason and, if wanted and allowed, queue its configuration again.

    Returns (whether this call failed it, the reason recorded). The state change is a compare-and-set
    in the database, so when several workers find the same stale trial, exactly one closes and
    requeues it. Only a kill within the milliseconds between the two writes loses the retry (the
    study then samples a fresh configuration; counts are unaffected).
    """
    history = [*trial.user_attrs.get(RETRY_ATTR, []), trial.number]
    requeue = retry and bool(trial.params) and len(history) <= MAX_RETRIES
    if retry and not trial.params:
        reason += "; it stopped before its configuration was stored, so a new one is sampled"
    elif retry and not requeue:
        reason += f"; configuration dropped after {MAX_RETRIES} retries"
    elif requeue:
        reason += "; retried with the same configuration"
    storage = study._storage
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    try:
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False, reason
    except UpdateFinishedTrialError:
        return False, reason  # another worker got there first
    if requeue:
        attrs = {k: trial.user_attrs[k] for k in CONFIG_ATTRS if k in trial.user_attrs}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**attrs, RETRY_ATTR: history}))
    return True, reason


def _reap(study: optuna.Study, family: str, reporter: Reporter) -> None:
    """Close the RUNNING trials whose worker is gone and queue them again (see the module docstring)."""
    storage = study._storage
    stale = set(storage._get_stale_trial_ids(study._study_id))
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if t._trial_id in stale:
            why = f"no heartbeat for over {GRACE_PERIOD} s from its worker {_who(worker)}"
        elif _worker_gone(worker):
            why = f"its worker {_who(worker)} is gone (killed or crashed)"
        elif worker is None and t.datetime_start and now - t.datetime_start.timestamp() > GRACE_PERIOD:
            why = "its worker stopped before recording itself"  # killed between ask and the first write
        else:
            continue
        closed, reason = _close(study, t, f"interrupted: {why}", retry=True)
        if closed:
            reporter("note", {"message": f"{family} trial #{t.number}: {reason}"})


def _who(worker: Any) -> str:
    return f"{worker.get('host')}:{worker.get('pid')}" if isinstance(worker, dict) else "(unknown)"


def _ask(study: optuna.Study) -> optuna.Trial:
    """study.ask() (a queued retry first, else a new trial) that records this worker on the trial.

    A new trial is created with its worker attribute in the same transaction (Optuna's own
    create_new_trial with a template), so no kill can leave a RUNNING trial that nobody can tell
    dead or alive; a popped retry gets it one write later (a kill in between costs a 60 s wait).
    """
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={WORKER_ATTR: _this_worker()})
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    else:
        study._storage.set_trial_user_attr(trial_id, WORKER_ATTR, _this_worker())
    study._thread_local.cached_all_trials = None  # as ask() does: the sampler must see the latest trials
    return optuna.Trial(study, trial_id)


WAIT = object()  # _claim's answer while other workers hold the last trials of a family


def _claim(study: optuna.Study, cfg: RunConfig, family: str, reporter: Reporter) -> optuna.Trial | None | object:
    """A RUNNING trial of ours towards the target, None when the family is done, or WAIT.

    No overshoot, with any number of workers: a worker keeps a trial only if, reading the study
    after its trial became RUNNING, it sees at most cfg.trials trials that are COMPLETE, RUNNING or
    WAITING. Of any N+1 trials that would complete, the one whose read came last would have seen
    all the others (each RUNNING or COMPLETE from before its own read onwards) and given up. A trial
    closed as stale cannot complete afterwards (tell refuses), so it cannot add to the count either.
    The losers of a tie give up (FAIL, reason "surplus") and back off a random moment.
    """
    while True:
        check_stop()
        _reap(study, family, reporter)
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        active = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= cfg.trials:
            return None
        if active >= cfg.trials and not waiting:
            return WAIT
        study.sampler = _sampler(cfg, family, len(trials))
        trial = _ask(study)
        try:
            trials = study.get_trials(deepcopy=False)
            active = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials)
            if active <= cfg.trials:
                return trial
            _close(study, study._storage.get_trial(trial._trial_id),
                   "surplus: other workers claimed the last trials at the same moment", retry=False)
        except BaseException:
            with contextlib.suppress(Exception):
                _close(study, study._storage.get_trial(trial._trial_id), "interrupted while claiming", retry=True)
            raise
        time.sleep(random.uniform(0.05, 0.5))


# ---------------------------------------------------------------- one trial

def run_trial(study: optuna.Study, cfg: RunConfig, family: str, data: TaskData, reporter: Reporter,
              trial: optuna.Trial | None = None) -> FrozenTrial:
    """Train one claimed trial (or ask one), checkpointing each epoch, and tell the result.

    A TrialFailed is recorded, not raised (the configuration is not retried: it would fail again).
    Any other exception (Ctrl-C, a storage error) closes the trial, queues it for retry and propagates.
    """
    if trial is None:
        trial = _ask(study)
    heartbeat = _Heartbeat(study._storage, trial._trial_id)
    ckpt: Path | None = None
    _trials_run[0] += 1
    try:
        heartbeat.start()
        _pause_at("claimed")
        spec, lr = space_mod.sample(trial, family, cfg.budget, data.d_in, data.d_out, cfg.space, cfg.fixed_win)
        # Everything needed to rebuild the model from the storage alone, written before training.
        attrs = {**spec.to_dict(), "params": spec.params, "trainable_params": spec.trainable_params,
                 "lr": lr, "seed": cfg.seed, "epochs": cfg.epochs}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        history = trial.user_attrs.get(RETRY_ATTR, [])
        origin = history[0] if history else trial.number
        ckpt = checkpoint.path_for(cfg.study_dir, family, origin)
        meta = {"study": cfg.study_name, "family": family, "origin": origin, **attrs,
                "batch_size": cfg.batch_size}
        resume, why = checkpoint.load(ckpt, meta)
        if why:
            reporter("note", {"message": f"{family} trial #{trial.number}: {why}"})
        reporter("trial_start", {"family": family, "number": trial.number, "spec": spec, "lr": lr,
                                 "retry_of": history, "resumed_epoch": int(resume["epoch"]) if resume else 0})

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            check_stop()
            reporter("progress", {"family": family, "epoch": epoch, "epochs": cfg.epochs,
                                  "step": step, "steps": steps, "loss": loss})
            if epoch >= 1 and step < steps:
                _pause_at("epoch")  # mid-epoch, with an earlier epoch's checkpoint on disk

        def on_epoch_end(state: dict[str, Any]) -> None:
            try:
                checkpoint.save(ckpt, state, meta)
            except OSError as e:
                raise StorageError(f"cannot write checkpoint {ckpt} ({e.strerror}): free space or pass a "
                                   "writable --results-dir") from None
            if state["epoch"] == cfg.epochs:
                _pause_at("eval")  # training done, evaluation next

        steps = -(-len(data.train) // cfg.batch_size)
        _, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                       progress=progress, report_every=max(1, min(50, steps // 4)), resume=resume,
                       on_epoch_end=on_epoch_end)
    except TrialFailed as e:
        heartbeat.stop()
        _close(study, study._storage.get_trial(trial._trial_id), str(e), retry=False)
        if ckpt is not None:
            checkpoint.remove(ckpt)
        frozen = study._storage.get_trial(trial._trial_id)
        reporter("trial_end", {"family": family, "trial": frozen, "reason": str(e)})
        return frozen
    except BaseException as e:
        heartbeat.stop()
        reason = f"interrupted by {e.signame}" if isinstance(e, Stopped) else (
            "interrupted" if isinstance(e, KeyboardInterrupt) else f"crashed: {type(e).__name__}: {_first_line(e)}")
        with contextlib.suppress(Exception):  # best effort: if this fails, the next run reaps it
            _close(study, study._storage.get_trial(trial._trial_id), reason, retry=True)
        raise
    for k, v in {"psnr_val": res.psnr_val, "psnr_test": res.psnr_test, "train_loss": res.train_loss,
                 "seconds": res.seconds}.items():
        trial.set_user_attr(k, v)
    try:
        frozen = study.tell(trial, [float(spec.params), res.psnr_val])
    except (UpdateFinishedTrialError, RuntimeError):
        # Another worker closed it as stale (this process stalled past the grace period): its
        # retry is queued, so this result is dropped to keep the count exact.
        frozen = study._storage.get_trial(trial._trial_id)
        reporter("trial_end", {"family": family, "trial": frozen,
                               "reason": "closed as stale by another worker; result dropped"})
        return frozen
    finally:
        heartbeat.stop()
    _pause_at("complete")
    checkpoint.remove(ckpt)
    reporter("trial_end", {"family": family, "trial": frozen, "reason": None})
    return frozen


# ---------------------------------------------------------------- the run

def feasible_families(cfg: RunConfig, d_in: int, d_out: int) -> tuple[list[str], list[str]]:
    """(families to search, one-line notes on families skipped because the budget is too small)."""
    keep, notes = [], []
    for fam in cfg.families:
        if space_mod.size_range(fam, d_in, d_out, cfg.budget, cfg.space) is not None:
            keep.append(fam)
        else:
            need = space_mod.smallest(fam, d_in, d_out).params
            notes.append(f"{fam} cannot fit {cfg.budget:,} parameters (its smallest model has {need:,}); skipping it")
    if not keep:
        need = min(space_mod.smallest(f, d_in, d_out).params for f in cfg.families)
        raise UsageError(
            f"budget {cfg.budget:,} is below the smallest {'/'.join(cfg.families)} model on this task "
            f"({d_in}->{d_out}): use --budget {need:,} or more"
        )
    return keep, notes


def load_task(cfg: RunConfig) -> TaskData:
    """Read the dataset and build the task's splits on the run's device (once per process)."""
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    return prepare(dataset, cfg.task, val_size=cfg.val_size, noise_sigma=cfg.noise_sigma, augment=cfg.augment,
                   train_size=cfg.train_size, device=device)


def _sweep(study: optuna.Study, cfg: RunConfig, family: str) -> None:
    """Delete checkpoints left by trials that finished (e.g. killed between completing and cleaning up)."""
    keep = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        history = t.user_attrs.get(RETRY_ATTR, [])
        keep.add(history[0] if history else t.number)
    checkpoint.sweep(cfg.study_dir, family, keep)


def run_search(cfg: RunConfig, reporter: Reporter = _quiet) -> dict[str, optuna.Study]:
    """Create or resume the studies and run until each family has cfg.trials completed trials.

    Safe to call from several processes or hosts on one storage (see the module docstring). Stops
    with Stopped (a KeyboardInterrupt) after request_stop() or a signal under stop_on_signals().
    """
    if cfg.budget <= 0:
        raise UsageError("run needs a parameter budget: pass --budget, e.g. --budget 5M")
    data = load_task(cfg)
    families, notes = feasible_families(cfg, data.d_in, data.d_out)
    for note in notes:
        reporter("note", {"message": note})
    check_stop()
    studies = open_studies(cfg, families, data)
    for fam, study in studies.items():
        _reap(study, fam, reporter)
        _sweep(study, cfg, fam)
    reporter("start", {"study": cfg.study_name, "storage": safe_url(cfg.storage_url), "target": cfg.trials,
                       "done": {f: completed(s) for f, s in studies.items()}})
    failures = dict.fromkeys(families, 0)
    t0 = time.perf_counter()
    pending = list(families)
    waited = False
    # Families take turns, so an interrupted run leaves both frontiers equally far along.
    while pending:
        all_wait = True
        for fam in list(pending):
            trial = _claim(studies[fam], cfg, fam, reporter)
            if trial is None:
                pending.remove(fam)
                continue
            if trial is WAIT:
                continue
            all_wait = False
            frozen = run_trial(studies[fam], cfg, fam, data, reporter, trial)
            failures[fam] = failures[fam] + 1 if frozen.state == TrialState.FAIL else 0
            if failures[fam] >= MAX_CONSECUTIVE_FAILURES:
                raise HgsearchError(
                    f"{MAX_CONSECUTIVE_FAILURES} {fam} trials failed in a row (last: "
                    f"{frozen.user_attrs.get('fail_reason')}): check --epochs, the lr range and the data"
                )
        if pending and all_wait:
            if not waited:
                reporter("note", {"message": "the remaining trials are running in other workers; waiting "
                                  f"for them (a dead worker's trial is retried after {GRACE_PERIOD} s)"})
                waited = True
            for _ in range(int(POLL_SECONDS / 0.1)):
                check_stop()
                time.sleep(0.1)
    reporter("done", {"seconds": time.perf_counter() - t0, "studies": studies})
    return studies


def study_exists(url: str, name: str) -> bool:
    try:
        return name in optuna.get_all_study_names(storage=url)
    except Exception as e:
        raise StorageError(f"cannot read storage {safe_url(url)}: {_scrubbed(e, url)}") from None


def default_study_dir(results_dir: str | Path) -> str:
    """The most recently used study under results_dir, for `frontier` without --study."""
    dbs = sorted(Path(results_dir).glob("*/study.db"), key=lambda p: p.stat().st_mtime)
    if not dbs:
        raise UsageError(f"no study found under {results_dir}/: run `hgsearch run --budget ...` first, or pass --study")
    return dbs[-1].parent.name


def train_single(
    cfg: RunConfig, *, family: str, width: int | None, bottleneck: int, depth: int, lr: float,
    save: str | Path | None = None,
) -> tuple[ArchSpec, TrainResult]:
    """Train one configuration exactly as a trial would (same data, splits, seed and loop)."""
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    data = load_task(cfg)
    if width is None:
        if family != "conventional":
            raise UsageError("--width is required for the hourglass family (the stream width d_z)")
        width = space_mod.stream_width(data.d_in, data.d_out)
    spec = ArchSpec(family, data.d_in, data.d_out, width, bottleneck, depth, cfg.fixed_win)
    if save is not None and not Path(save).parent.is_dir():
        raise UsageError(f"cannot save to {save}: directory {Path(save).parent} does not exist")
    model, res = train(spec, data, lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    if save is not None:
        from hgsearch.frontier import atomic_write

        payload = {"spec": spec.to_dict(), "state_dict": model.state_dict(), "lr": lr, "epochs": cfg.epochs,
                   "seed": cfg.seed, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test}
        atomic_write(Path(save), lambda p: torch.save(payload, p))
    return spec, res
