"""Thin Typer CLI: parse options, call one library function, print. Errors become exit codes here once."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import Abort, TyperException
from rich.console import Console

from hgsearch.errors import HgsearchError

# Library modules are imported inside the commands: they pull in torch and Optuna (about 2 s), which
# `--help` and option errors do not need.

app = typer.Typer(
    help="Architecture search over MLP shapes: Hourglass vs conventional residual MLPs on a parameter budget.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# Options shared by `run` and `train`; None means "take the config file's or the default value".
TaskOpt = typer.Option(None, "--task", help="denoise | superres | classify [default: superres]")
DatasetOpt = typer.Option(None, "--dataset", help="fashion-mnist | mnist | cifar10 | imagenet32 | idx [default: fashion-mnist]")
DataDirOpt = typer.Option(None, "--data-dir", help="Directory holding the dataset's files.")
DownloadOpt = typer.Option(None, "--download/--no-download", help="Fetch a dataset found nowhere locally from its "
                           "canonical source, md5-verified, into --data-dir or the cache [default: no].")
TrainSizeOpt = typer.Option(None, "--train-size", help="Train on only N images (validation is unchanged), e.g. "
                            "for a quick look at a large dataset; part of the study [default: 0 = all].")
AugmentOpt = typer.Option(None, "--augment", help="none | flips: the paper's flip augmentation x4 (each image also "
                          "flipped left-right, up-down and both; 4x the steps per epoch) [default: none].")
EpochsOpt = typer.Option(None, "--epochs", help="Epochs per trial [default: 2; the paper uses 50].")
SeedOpt = typer.Option(None, "--seed", help="Seed of the sampler and of each trial's initialisation [default: 0].")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda [default: auto].")
WinOpt = typer.Option(None, "--fixed-win/--trained-win", help="Keep W_in fixed at its random init [default: trained].")
ConfigOpt = typer.Option(None, "--config", help="TOML file with [run] and [space] tables (see configs/default.toml).")
ResultsOpt = typer.Option(None, "--results-dir", help="Where studies and their files live [default: results].")


@app.command()
def run(
    budget: str = typer.Option(..., "--budget", help="Parameter budget: 500K, 5M, 1.5M or 2500000."),
    task: Optional[str] = TaskOpt,
    dataset: Optional[str] = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    download: Optional[bool] = DownloadOpt,
    augment: Optional[str] = AugmentOpt,
    train_size: Optional[int] = TrainSizeOpt,
    family: Optional[str] = typer.Option(None, "--family", help="hourglass | conventional | both [default: both]"),
    trials: Optional[int] = typer.Option(None, "--trials", help="Completed trials per family, across restarts [default: 20]."),
    epochs: Optional[int] = EpochsOpt,
    study: Optional[str] = typer.Option(None, "--study", help="Study name [default: <task>-<dataset>-<budget>]."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL [default: sqlite:///results/<study>/study.db]."),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    fixed_win: Optional[bool] = WinOpt,
    results_dir: Optional[str] = ResultsOpt,
    config: Optional[Path] = ConfigOpt,
    workers: int = typer.Option(1, "--workers", help="Worker processes on this machine for this one study "
                                "(GPUs round-robin, else the CPU cores shared)."),
) -> None:
    """Start or resume a budgeted Pareto search of both MLP families (the same command resumes)."""
    from hgsearch.claims import stop_on_signals
    from hgsearch.config import format_budget, load_config, parse_budget
    from hgsearch.display import LiveDisplay
    from hgsearch.frontier import load_frontier
    from hgsearch.search import run_search
    from hgsearch.tables import frontier_table

    cfg = load_config(config, budget=parse_budget(budget), task=task, dataset=dataset, data_dir=data_dir,
                      download=download, augment=augment, train_size=train_size, family=family, trials=trials,
                      epochs=epochs, study=study, storage=storage, seed=seed, device=device, fixed_win=fixed_win,
                      results_dir=results_dir)
    out.print(f"searching {cfg.family} on {cfg.task}/{cfg.dataset}, budget {format_budget(cfg.budget)} "
              f"({cfg.budget:,}), {cfg.trials} trials per family, {cfg.epochs} epochs each")
    try:
        with LiveDisplay(out, cfg.trials) as live:
            if workers != 1:
                from hgsearch.workers import run_parallel

                run_parallel(cfg, workers, live)
            else:
                with stop_on_signals(_stopping):
                    run_search(cfg, reporter=live)
    except KeyboardInterrupt as e:
        name = getattr(e, "signame", "SIGINT")
        err.print(f"stopped by {name}; the study is consistent and an unfinished trial is queued to continue "
                  f"from its last epoch. Resume with: {_resume_command()}", highlight=False, markup=False,
                  soft_wrap=True)
        raise typer.Exit(128 + signal.Signals[name].value)
    out.print(frontier_table(load_frontier(cfg.study_name, cfg.storage_url)))
    out.print(f"next: hgsearch frontier --study {cfg.study_name} --plot")


StudyOpt = typer.Option(None, "--study", help="Study name [default: the latest under --results-dir].")
StorageOpt = typer.Option(None, "--storage", help="Optuna RDB URL [default: the study's SQLite file].")
ResultsDirOpt = typer.Option("results", "--results-dir", help="Where studies and their files live.")
StudyDataDirOpt = typer.Option(None, "--data-dir", help="The study's dataset directory, if not where `run` found it.")


def _stopping(signame: str) -> None:
    """Called from the signal handler: say at once that the first signal was heard (no rich: re-entrancy)."""
    os.write(2, f"{signame}: stopping after the current step; press Ctrl-C again to stop at once\n".encode())


def _resume_command() -> str:
    """The command line that resumes this run, with any storage password masked."""
    from hgsearch.storage import safe_url

    def masked(arg: str) -> str:
        if "://" not in arg:
            return arg
        if arg.startswith("--") and "=" in arg:
            opt, _, url = arg.partition("=")
            return f"{opt}={safe_url(url)}"
        return safe_url(arg)

    return shlex.join(["hgsearch", *map(masked, sys.argv[1:])])


@app.command()
def frontier(
    study: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    results_dir: str = ResultsDirOpt,
    plot: bool = typer.Option(False, "--plot", help="Also draw frontier and scaling figures (PNG and SVG)."),
    data_dir: Optional[str] = StudyDataDirOpt,
) -> None:
    """Compare the families (hypervolume, domination, gap per budget) and write frontier.csv, trials.csv
    and summary.json (and figures with --plot) for a study."""
    from hgsearch.analysis import analyze, write_outputs
    from hgsearch.frontier import locate_study
    from hgsearch.tables import analysis_tables

    name, out_dir, url = locate_study(study, storage, results_dir)
    an = analyze(name, url, data_dir=data_dir)
    paths = write_outputs(an, out_dir, plot=plot)
    for table in analysis_tables(an):
        out.print(table)
    if an.baseline_note:
        out.print(f"[yellow]note:[/] {an.baseline_note}")
    for p in paths:
        out.print(f"wrote {p}")


@app.command()
def show(study: Optional[str] = StudyOpt, storage: Optional[str] = StorageOpt,
         results_dir: str = ResultsDirOpt) -> None:
    """A study's state: completed, running and failed trials per family, best PSNR, hours spent."""
    from hgsearch.frontier import locate_study, study_state
    from hgsearch.tables import state_table

    name, _, url = locate_study(study, storage, results_dir)
    out.print(state_table(name, study_state(name, url)))


@app.command()
def confirm(
    seeds: int = typer.Option(..., "--seeds", help="Seeds per frontier point (the search's run is the first)."),
    study: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    results_dir: str = ResultsDirOpt,
    data_dir: Optional[str] = StudyDataDirOpt,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
) -> None:
    """Retrain each frontier configuration with K seeds (kept in the storage; re-running is free) and
    print the frontier on seed means."""
    from hgsearch.confirm import confirm_seeds
    from hgsearch.frontier import locate_study

    def say(event: str, info: dict) -> None:
        if event == "start":
            out.print(f"seed runs go to study {info['study']} in {info['storage']}")
        elif event == "run_start":
            r = info["row"]
            out.print(f"  [{info['index'] + 1}/{info['total']}] {r['family']} #{int(r['trial'])} "
                      f"({int(r['params']):,} params) seed {info['seed']} ...", end=" ")
        elif event == "run_end":
            out.print(f"failed: {info['reason']}" if info["reason"] else
                      f"val {info['psnr_val']:.2f} dB, test {info['psnr_test']:.2f} dB, {info['seconds']:.1f} s")

    name, _, url = locate_study(study, storage, results_dir)
    front = confirm_seeds(name, url, seeds, data_dir=data_dir, device=device, reporter=say)
    out.print(f"frontier on seed means: {len(front)} points with {int(front['n_seeds'].min())}+ seeds each")
    out.print(f"next: hgsearch frontier --study {name} --plot, or hgsearch report --study {name}")


@app.command()
def report(
    study: Optional[str] = StudyOpt,
    storage: Optional[str] = StorageOpt,
    results_dir: str = ResultsDirOpt,
    data_dir: Optional[str] = StudyDataDirOpt,
    samples: bool = typer.Option(True, "--samples/--no-samples",
                                 help="Sample grids per frontier point (retrains points without saved weights)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
) -> None:
    """Write results/<study>/report.html: one self-contained offline page with every figure and table."""
    from hgsearch.analysis import analyze
    from hgsearch.frontier import locate_study
    from hgsearch.report import write_report

    name, out_dir, url = locate_study(study, storage, results_dir)
    out.print(f"wrote {write_report(analyze(name, url, data_dir=data_dir, device=device), out_dir, samples=samples)}")


@app.command()
def train(
    family: str = typer.Option(..., "--family", help="hourglass | conventional"),
    depth: int = typer.Option(..., "--depth", help="Number of residual blocks L."),
    bottleneck: int = typer.Option(..., "--bottleneck", help="Inner width d_h of each block."),
    lr: float = typer.Option(..., "--lr", help="Peak learning rate (decayed linearly to zero)."),
    width: Optional[int] = typer.Option(None, "--width", help="Stream width d_z [default for conventional: the image size]."),
    task: Optional[str] = TaskOpt,
    dataset: Optional[str] = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    download: Optional[bool] = DownloadOpt,
    augment: Optional[str] = AugmentOpt,
    train_size: Optional[int] = TrainSizeOpt,
    epochs: Optional[int] = EpochsOpt,
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    fixed_win: Optional[bool] = WinOpt,
    config: Optional[Path] = ConfigOpt,
    save: Optional[Path] = typer.Option(None, "--save", help="Write the trained weights (state_dict) here."),
) -> None:
    """Train one configuration with the same code a trial uses; print its size, PSNRs and wall time."""
    from hgsearch.config import load_config
    from hgsearch.search import train_single

    cfg = load_config(config, task=task, dataset=dataset, data_dir=data_dir, download=download, augment=augment,
                      train_size=train_size, epochs=epochs, seed=seed, device=device, fixed_win=fixed_win)
    spec, res = train_single(cfg, family=family, width=width, bottleneck=bottleneck, depth=depth, lr=lr, save=save)
    out.print(f"{spec.family}: width {spec.width}, bottleneck {spec.bottleneck}, depth {spec.depth}, "
              f"{spec.params:,} parameters ({spec.trainable_params:,} trainable)")
    out.print(f"validation PSNR {res.psnr_val:.2f} dB, test PSNR {res.psnr_test:.2f} dB, "
              f"{res.epochs} epochs in {res.seconds:.1f} s")
    if save:
        out.print(f"wrote {save}")


def _setup_process() -> None:
    """Process-wide settings that belong to the command line, not to the library (a notebook keeps its own)."""
    # hgsearch reports through its own display; Optuna's per-trial INFO lines would interleave with it.
    # logging.disable rather than optuna.logging.set_verbosity: that would import Optuna (~1 s) for --help.
    logging.disable(logging.INFO)


def main() -> None:
    """Console entry point: every expected failure is one line on stderr and an exit code."""
    _setup_process()
    args = sys.argv[1:] or ["--help"]
    try:
        code = app(args=args, prog_name="hgsearch", standalone_mode=False)
    except HgsearchError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Abort:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except TyperException as e:  # option parsing: unknown option, missing value, wrong type
        err.print(f"error: {e.format_message()} (see hgsearch --help)", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code or 0)
