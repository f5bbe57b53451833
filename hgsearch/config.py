"""Run settings: budget parsing, TOML config files and the frozen RunConfig every command uses."""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_type_hints

from hgsearch.errors import UsageError
from hgsearch.names import AUGMENTS, DATASETS, DEVICES, FAMILIES, FAMILY_CHOICES, PRUNING_RULES, SAMPLERS, TASKS

# A number as people write it: digits, with commas (or underscores) only between groups of three
# ("5,000,000"), an optional decimal part and either an exponent ("5e6") or a K/M/G suffix.
_BUDGET = re.compile(r"^\s*(\d{1,3}(?:,\d{3})+|\d{1,3}(?:_\d{3})+|\d+)(\.\d+)?"
                     r"(?:([eE][+-]?\d+)|\s*([kKmMgG]))?\s*$")
_SCALE = {None: 1, "k": 10**3, "m": 10**6, "g": 10**9}
_BUDGET_HINT = "write it like 500K, 5M, 1.5M, 5e6, 2500000 or 2,500,000"


def parse_budget(text: str | int) -> int:
    """'500K', '5M', '1.5M', '5e6', '2500000', '2,500,000' -> parameter count; else a UsageError."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    m = _BUDGET.match(str(text))
    if not m:
        why = (" (commas only separate thousands, as in 5,000,000; 1.5 million is 1.5M)"
               if "," in str(text) else "")
        raise UsageError(f"invalid budget {text!r}{why}: {_BUDGET_HINT}")
    digits, decimals, exponent, suffix = m.groups()
    try:
        value = Decimal(digits.replace("_", "").replace(",", "") + (decimals or "") + (exponent or ""))
        value *= _SCALE[suffix.lower() if suffix else None]
    except InvalidOperation:
        raise UsageError(f"invalid budget {text!r}: {_BUDGET_HINT}") from None
    if value != value.to_integral_value():
        raise UsageError(f"invalid budget {text!r}: it is not a whole number of parameters")
    if value <= 0:
        raise UsageError(f"invalid budget {text!r}: it must be a positive parameter count")
    if value > 10**12:
        raise UsageError(f"invalid budget {text!r}: over 10^12 parameters is not an MLP search")
    return int(value)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.I)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?|\.\d+")  # Optuna's own timeout unit: "90", "2.5"


def parse_duration(text: str | float) -> float:
    """'90' (plain seconds, as Optuna's timeout), '45s', '90m', '2h', '1h30m', '1.5h' -> seconds; else a UsageError."""
    compact = re.sub(r"\s+", "", str(text))
    if _PLAIN_SECONDS.fullmatch(compact):
        seconds = float(compact)
    else:
        parts = _DURATION.findall(compact)
        if not compact or "".join(n + u for n, u in parts) != compact:
            raise UsageError(f"invalid duration {text!r}: write it like 90 (seconds), 45s, 90m, 2h or 1h30m")
        seconds = sum(float(n) * _SECONDS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: it must be longer than 0 s")
    return seconds


def format_budget(n: int) -> str:
    """Shortest exact label for a budget, for study names: 5000000 -> '5M', 1500000 -> '1.5M'."""
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            text = f"{Decimal(n) / scale:f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            if len(text) <= 6:  # keep labels short; otherwise the plain number reads better
                return text + suffix
    return str(n)


@dataclass(frozen=True)
class SpaceConfig:
    """Ranges of the search space; the defaults cover every configuration on the paper's frontiers."""

    hourglass_depth: tuple[int, int] = (1, 48)  # paper: 1 to 45 blocks
    conventional_depth: tuple[int, int] = (1, 8)  # paper: 1 to 5 blocks
    ratio: tuple[float, float] = (0.004, 0.9)  # Hourglass d_h / d_z; paper frontiers 0.005 to 0.45
    lr: tuple[float, float] = (5e-5, 5e-3)  # paper: about 5e-5 to 5e-3
    min_fraction: float = 0.1  # smallest target size, as a fraction of the budget

    def __post_init__(self) -> None:
        for name in ("hourglass_depth", "conventional_depth", "ratio", "lr"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise UsageError(f"space.{name} must be [low, high] with 0 < low <= high, got {[lo, hi]}")
            object.__setattr__(self, name, (type(lo)(lo), type(hi)(hi)))
        if self.ratio[1] >= 1:
            raise UsageError("space.ratio high must be < 1: Hourglass needs bottleneck < width")
        if not 0 < self.min_fraction <= 1:
            raise UsageError(f"space.min_fraction must be in (0, 1], got {self.min_fraction}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a search or a single training run needs; built from defaults, TOML and options."""

    budget: int = 0  # parameter budget; 0 only for `train`, which needs none
    task: str = "superres"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False  # fetch a missing dataset from its canonical source (md5-verified)
    augment: str = "none"  # "flips": the paper's ImageNet-32 flip augmentation x4 (4x steps per epoch)
    train_size: int = 0  # train on only this many images (after validation is carved out); 0 = all
    image_size: int = 0  # npz and folder only: resize every image to this many pixels square; 0 = as stored
    family: str = "both"
    trials: int = 20  # finished trials per family the study should end with (completed or stopped early)
    epochs: int = 9  # per trial: pruner rungs at 1 and 3; `run --budget 5M` in about an hour on 2 CPU cores
    until_settled: bool = False  # after --trials, add trials until the answer is settled (search.settled)
    max_trials: int = 0  # the cap of until_settled, per family; 0 = 3 x trials
    study: str | None = None  # default derived from task, dataset and budget
    storage: str | None = None  # default sqlite:///<results_dir>/<study>/study.db
    storage_retry_seconds: float = 300.0  # how long a database outage the search waits out before it stops
    results_dir: str = "results"
    seed: int = 0
    device: str = "auto"
    fixed_win: bool = False
    batch_size: int = 128
    val_size: int = 10_000  # carved from the training set with a fixed seed, at most a sixth of it
    noise_sigma: float = 0.25
    sampler: str = "gp"  # how new configurations are drawn: gp | tpe-mv | tpe | qmc | random (search.sampler)
    pruning: str = "pareto-asha"  # early stopping: none | pareto-asha | psnr-bins (hgsearch.search.pruning)
    min_epochs: int = 1  # first rung; rungs are min_epochs * reduction_factor^k below --epochs
    reduction_factor: int = 3  # about 1 in reduction_factor trials passes each rung
    prune_margin: float = 0.5  # dB a no-larger peer must lead by before a trial can be stopped
    prune_min_peers: int = 3  # a rung decides nothing until this many same-family trials reached it
    epoch_eval_size: int = 2048  # validation images scored after every epoch (0 = all); finals use all
    pack_size: int = 0  # trials trained at once as one pack: 0 = as many as fit on CUDA, serial on a CPU; 1 = serial
    space: SpaceConfig = field(default_factory=SpaceConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.family not in FAMILY_CHOICES:
            raise UsageError(f"unknown family {self.family!r}: use one of {', '.join(FAMILY_CHOICES)}")
        if self.train_size < 0:
            raise UsageError(f"--train-size must be 0 (all images) or positive, got {self.train_size}")
        if self.image_size < 0 or self.image_size == 1:
            raise UsageError(f"--image-size must be 0 (as stored) or at least 2 pixels, got {self.image_size}")
        if self.augment not in AUGMENTS:
            raise UsageError(f"unknown augmentation {self.augment!r}: use one of {', '.join(AUGMENTS)}")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}: use one of {', '.join(DEVICES)}")
        for name in ("trials", "epochs", "batch_size", "val_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_trials < 0 or (self.max_trials and self.max_trials < self.trials):
            raise UsageError(f"--max-trials must be 0 (3 x --trials) or at least --trials ({self.trials}), "
                             f"got {self.max_trials}")
        if self.pack_size < 0:
            raise UsageError(f"--pack-size must be 0 (auto), 1 (one trial at a time) or more, got {self.pack_size}")
        if not self.storage_retry_seconds >= 0:
            raise UsageError(f"storage_retry_seconds must be 0 or more, got {self.storage_retry_seconds}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.pruning not in PRUNING_RULES:
            raise UsageError(f"unknown pruning {self.pruning!r}: use one of {', '.join(PRUNING_RULES)}")
        for name, low in (("min_epochs", 1), ("reduction_factor", 2), ("prune_min_peers", 1),
                          ("epoch_eval_size", 0)):
            if int(getattr(self, name)) < low:
                raise UsageError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not self.prune_margin >= 0:
            raise UsageError(f"prune_margin must be 0 or more dB, got {self.prune_margin}")
        if not 0 <= self.noise_sigma < 10:
            raise UsageError(f"noise_sigma must be in [0, 10), got {self.noise_sigma}")
        if self.budget < 0:
            raise UsageError("the budget must be a positive parameter count")
        if self.study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.study):
            raise UsageError(
                f"invalid study name {self.study!r}: use letters, digits, '.', '_' and '-' (max 100)"
            )

    @property
    def families(self) -> tuple[str, ...]:
        return FAMILIES if self.family == "both" else (self.family,)

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        name = f"{self.task}-{self.dataset}-{format_budget(self.budget)}"
        return name + ("-fixedwin" if self.fixed_win else "")

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.study_name

    @property
    def storage_url(self) -> str:
        return self.storage or sqlite_url(self.study_dir)


STUDY_DB = "study.db"  # a study's default SQLite file, inside its results directory


def sqlite_url(study_dir: str | Path) -> str:
    """The default storage URL of the study whose results directory is study_dir."""
    return f"sqlite:///{Path(study_dir) / STUDY_DB}"


# A config file's [run] keys are the command-line options' names (budget, pruner, ...), so a file reads
# like the command it replaces. One RunConfig field is named otherwise, because every study's stored
# settings call it so (search.identity): key -> field.
_FIELD_OF_KEY = {"pruner": "pruning"}
# Keys renamed since: still read, with a note to rename them (old -> new).
_OLD_KEYS = {"pruning": "pruner"}
# The values a config file may give each string key; RunConfig checks them again for CLI options.
_CHOICES: dict[str, tuple[str, ...]] = {"task": TASKS, "dataset": DATASETS, "augment": AUGMENTS,
                                        "family": FAMILY_CHOICES, "device": DEVICES, "pruner": PRUNING_RULES,
                                        "sampler": SAMPLERS}
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _toml_type(value: Any) -> str:
    """How TOML spells the value's type, for error messages."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return {bool: "a boolean", int: "a whole number", float: "a decimal number", str: "a string"}.get(
        type(value), type(value).__name__)


def _check_scalar(kind: type, value: Any) -> bool:
    if kind is float:  # 5 means 5.0; TOML's true is not a number
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_value(key: str, value: Any, hint: Any, where: str) -> Any:
    """The file's value converted to the field's type, or a UsageError naming key, file, value and what is allowed."""
    def bad(allowed: str, what: str = "") -> UsageError:
        shown = json.dumps(value, default=str)  # TOML's spelling: "abc", true, [1, 2]
        return UsageError(f"{where}: {key} = {shown} is {what or _toml_type(value)}; {key} must be {allowed}")

    if key == "budget":
        if not _check_scalar(int, value) and not isinstance(value, str):
            raise bad("a parameter count like \"5M\", \"1.5M\" or 2500000")
        try:
            return parse_budget(value)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
    if hint in (tuple[int, int], tuple[float, float]):
        kind = hint.__args__[0]
        allowed = f"a list of two {'whole numbers' if kind is int else 'numbers'} [low, high]"
        if not (isinstance(value, list) and len(value) == 2 and all(_check_scalar(kind, v) for v in value)):
            raise bad(allowed)
        return (kind(value[0]), kind(value[1]))
    kind = next(k for k in (bool, int, float, str) if hint in (k, k | None))
    if not _check_scalar(kind, value):
        raise bad(_KINDS[kind])
    if key in _CHOICES and value not in _CHOICES[key]:
        raise bad(f"one of {', '.join(_CHOICES[key])}", "not a known value")
    return float(value) if kind is float else value


def _from_table(cls: type, table: Any, where: str, keys: dict[str, str]) -> dict[str, Any]:
    """A [run] or [space] table checked key by key (keys: key -> field) against the fields' types."""
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table of key = value lines, not {_toml_type(table)}")
    hints = get_type_hints(cls)
    unknown = sorted(set(table) - set(keys))
    if unknown:
        where_else = " ([space] is its own table)" if "space" in unknown and cls is RunConfig else ""
        raise UsageError(f"unknown key(s) {', '.join(unknown)} in {where}{where_else}: allowed are "
                         f"{', '.join(sorted(keys))}")
    return {k: _check_value(k, v, hints[keys[k]], where) for k, v in table.items()}


def _run_keys() -> dict[str, str]:
    """[run]'s keys -> RunConfig's fields: every field but the [space] table, under its option's name."""
    renamed = {f: k for k, f in _FIELD_OF_KEY.items()}
    return {renamed.get(f.name, f.name): f.name for f in fields(RunConfig) if f.name != "space"}


def _fields(run: dict[str, Any]) -> dict[str, Any]:
    """[run] values by key -> RunConfig keyword arguments."""
    return {_FIELD_OF_KEY.get(k, k): v for k, v in run.items()}


@dataclass(frozen=True)
class ConfigFile:
    """A TOML config file, read and checked: [run] by key (the options' names), [space], notes for the user."""

    run: dict[str, Any] = field(default_factory=dict)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    notes: tuple[str, ...] = ()  # one line each: what to change in the file, though it was read

    def build(self, **overrides: Any) -> RunConfig:
        """The file's values, then the overrides (RunConfig's field names) that are not None."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return RunConfig(**{**_fields(self.run), **given}, space=self.space)


def read_config(path: str | Path) -> ConfigFile:
    """The TOML file's [run] and [space] tables; a UsageError naming file, key and fix for anything wrong."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {p} does not exist: check the --config path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {p} is not valid TOML ({e}): fix the file") from None
    unknown = sorted(set(doc) - {"run", "space"})
    if unknown:
        raise UsageError(f"unknown table(s) {', '.join(unknown)} in {p}: use [run] and [space]")
    table = doc.get("run", {})
    notes = []
    if isinstance(table, dict):
        table = dict(table)
        for old, new in _OLD_KEYS.items():
            if old in table and new in table:
                raise UsageError(f"{p} [run]: {old} and {new} are the same setting; keep {new} only")
            if old in table:
                table[new] = table.pop(old)
                notes.append(f"{p} [run]: the key {old} is now called {new}, like the option --{new}: rename it")
    run = _from_table(RunConfig, table, f"{p} [run]", _run_keys())
    space = _from_table(SpaceConfig, doc.get("space", {}), f"{p} [space]",
                        {f.name: f.name for f in fields(SpaceConfig)})
    try:
        space_cfg = SpaceConfig(**space)
    except UsageError as e:
        raise UsageError(f"{p} [space]: {e}") from None
    file = ConfigFile(run, space_cfg, tuple(notes))
    try:
        file.build()  # the file's values make a valid RunConfig on their own, whatever options come later
    except UsageError as e:
        raise UsageError(f"{p} [run]: {e}") from None
    return file


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then the TOML file's [run] and [space] tables, then explicit overrides (RunConfig's field
    names; None means not given). A renamed key in the file still works, with a DeprecationWarning."""
    file = read_config(path) if path is not None else ConfigFile()
    for line in file.notes:
        warnings.warn(line, DeprecationWarning, stacklevel=2)
    return file.build(**overrides)
