"""The commands' options: choices and defaults from the library, shared types, --config as Click's default_map."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperOption

from hgsearch.cli.output import note
from hgsearch.config import ConfigFile, RunConfig, read_config
from hgsearch.names import AUGMENTS, DATASETS, DEVICES, FAMILIES, FAMILY_CHOICES, PRUNING_RULES, SAMPLERS, TASKS

# hgsearch.config and hgsearch.names import neither torch nor Optuna, so `--help` and option errors stay fast.


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """An Enum of the library's own list, so --help and validation cannot drift from the code."""
    return Enum(name, {v: v for v in values}, type=str)


Task = _choices("Task", TASKS)
Dataset = _choices("Dataset", DATASETS)
Augment = _choices("Augment", AUGMENTS)
Device = _choices("Device", DEVICES)
Family = _choices("Family", FAMILY_CHOICES)
OneFamily = _choices("OneFamily", FAMILIES)
PruneRule = _choices("PruneRule", PRUNING_RULES)
SamplerName = _choices("SamplerName", SAMPLERS)

# The options' defaults are RunConfig's own; a --config file's [run] table replaces them (default_map).
DEFAULTS = RunConfig()
# train's default peak lr: the log-midpoint of the default search range (SpaceConfig.lr, 5e-5 to 5e-3),
# i.e. the value the search centres on; a test checks it against SpaceConfig.
TRAIN_LR = 5e-4


class _Option(TyperOption):
    """Every option's default printed one way, as values print: `[default: none]`, not Click's `[default: (none)]`
    for a default described in words; a flag pair shows the side a --config file chose, not the declared one."""

    def _get_default_string(self, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if show_default_is_str:
            return str(self.show_default)
        if self.is_bool_flag and self.secondary_opts:
            return (self.opts if default_value else self.secondary_opts)[0].lstrip("-")
        return super()._get_default_string(ctx=ctx, show_default_is_str=False, default_value=default_value)


class Command(TyperCommand):
    """Every hgsearch command (`@app.command(cls=Command)`): its options print their defaults as _Option does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperOption:
                param.__class__ = _Option  # Typer builds the options; the subclass only overrides one method


_CONFIG_FILE = "hgsearch.config_file"  # ctx.meta key: the ConfigFile that --config read


def _config_callback(skip: frozenset[str]) -> Any:
    """--config's callback: read the file once, then its [run] values are the command's option defaults.

    --config is eager, so it runs before the other options take their values: Click then looks each one
    up in ctx.default_map before its declared default, and a value given on the command line still wins.
    `skip`: keys whose option means something else on this command (train's --family is one family).
    """
    def read(ctx: typer.Context, path: Path | None) -> Path | None:
        if path is None or ctx.resilient_parsing:
            return path
        file = read_config(path)
        for line in file.notes:
            note(f"note: {line}")
        ctx.meta[_CONFIG_FILE] = file
        ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in file.run.items() if k not in skip}}
        return path

    return read


def config_file(ctx: typer.Context) -> ConfigFile:
    """What --config read (its [run] keys that are no option, such as batch_size, and [space]), or nothing."""
    return ctx.meta.get(_CONFIG_FILE, ConfigFile())


_CONFIG_HELP = ("TOML file with [run] and [space] tables (see configs/default.toml); its [run] values are the "
                "options' defaults, options given on the command line override it.")
RunConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help=_CONFIG_HELP, show_default="none", is_eager=True, callback=_config_callback(frozenset()))]
TrainConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help=_CONFIG_HELP + " Its family key is run's only.",
    show_default="none", is_eager=True, callback=_config_callback(frozenset({"family"})))]

# Options shared by `run` and `train`.
TaskOpt = Annotated[Task, typer.Option(
    "--task", help="What the models learn: superres (x2 super-resolution), denoise (denoising) or classify "
    "(generative classification).")]
DatasetOpt = Annotated[Dataset, typer.Option(
    "--dataset", help="Which dataset (idx: any set of MNIST-format files in --data-dir; npz: your arrays "
    "x_train, x_test [, y_train, y_test] in an .npz file; folder: your images in DIR/train/<class>/ and "
    "DIR/test/<class>/; see docs/datasets.md).")]
DataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", help="Directory holding the dataset's files (npz: the .npz file or its directory; folder: the "
    "image folder).", show_default="look in $HGSEARCH_DATA_DIR, system locations, the cache")]
ImageSizeOpt = Annotated[int, typer.Option(
    "--image-size", min=0, help="npz and folder: resize every image to N x N pixels (needed when a folder's "
    "images differ in size); part of a study's identity; 0 = as stored.")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download/--no-download", help="Fetch a dataset found nowhere locally from its canonical source, "
    "md5-verified, into --data-dir or the cache.")]
AugmentOpt = Annotated[Augment, typer.Option(
    "--augment", help="flips: the paper's flip augmentation x4 (each image also flipped left-right, up-down "
    "and both; 4x the steps per epoch); part of a study's identity.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Epochs of training (the paper uses 50).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto: CUDA when PyTorch sees one, else the CPU.")]
WinOpt = Annotated[bool, typer.Option(
    "--fixed-win/--trained-win", help="Keep W_in fixed at its random initialisation, or train it.")]

# Options of the commands that read a study.
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name.",
                                                 show_default="the one changed last under --results-dir")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL.",
                                                   show_default="the study's SQLite file")]
ResultsDirOpt = Annotated[str, typer.Option("--results-dir", help="Where studies and their files live.")]
StudyDataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", help="The study's data, if not where `run` last read it (stored with the study).",
    show_default="where `run` last read it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the data as JSON on stdout instead of the tables "
                                       "(messages go to stderr).")]
