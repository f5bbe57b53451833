"""Thin Typer CLI: parse options, call one library function, print. Errors become exit codes here once."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import Abort, TyperException

from hgsearch import __version__
from hgsearch.cli.options import (
    DEFAULTS,
    TRAIN_LR,
    Augment,
    AugmentOpt,
    Command,
    DataDirOpt,
    Dataset,
    DatasetOpt,
    Device,
    DeviceOpt,
    DownloadOpt,
    EpochsOpt,
    Family,
    ImageSizeOpt,
    JsonOpt,
    OneFamily,
    PruneRule,
    ResultsDirOpt,
    RunConfigOpt,
    SamplerName,
    StorageOpt,
    StudyDataDirOpt,
    StudyOpt,
    Task,
    TaskOpt,
    TrainConfigOpt,
    WinOpt,
    config_file,
)
from hgsearch.cli.output import err, note, out, say
from hgsearch.errors import HgsearchError, UsageError
from hgsearch.store import quiet_optuna_rdb_logger

# Library modules that pull in torch and Optuna (about 2 s) are imported inside the commands: `--help`
# and option errors do not need them.

app = typer.Typer(
    help="Architecture search over MLP shapes: Hourglass vs conventional residual MLPs on a parameter budget.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    # Plain Click help: rich markup would eat the square brackets of "[default: ...]" and "[run]".
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(show: bool) -> None:
    if show:
        print(f"hgsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _top(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print hgsearch's version and exit.")] = False) -> None:
    """Architecture search over MLP shapes: Hourglass vs conventional residual MLPs on a parameter budget."""


@app.command(cls=Command, short_help="Start or resume a budgeted search of both MLP families.")
def run(
    ctx: typer.Context,
    budget: Annotated[str, typer.Option("--budget", help="Parameter budget: 500K, 5M, 1.5M, 5e6, 2500000 or "
                                        "2,500,000 (commas only between groups of three: 1,5M is refused).",
                                        show_default=False)],
    task: TaskOpt = Task[DEFAULTS.task],
    dataset: DatasetOpt = Dataset[DEFAULTS.dataset],
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = DEFAULTS.image_size,
    download: DownloadOpt = DEFAULTS.download,
    augment: AugmentOpt = Augment[DEFAULTS.augment],
    train_size: Annotated[int, typer.Option(
        "--train-size", help="Train on only N images (validation is unchanged), e.g. for a quick look "
        "at a large dataset; part of the study's identity; 0 = all.")] = DEFAULTS.train_size,
    family: Annotated[Family, typer.Option("--family", help="Which families to search.")] = Family[DEFAULTS.family],
    trials: Annotated[int, typer.Option(
        "--trials", help="Finished trials per family the study ends with, across restarts (completed or "
        "stopped early by the pruner).")] = DEFAULTS.trials,
    until_settled: Annotated[bool, typer.Option(
        "--until-settled", help="After --trials, go on 4 trials per family at a time until the answer is settled "
        "at every budget (the verdict `frontier` prints), up to --max-trials.")] = DEFAULTS.until_settled,
    max_trials: Annotated[int, typer.Option(
        "--max-trials", min=0, help="The cap of --until-settled, per family; 0 = 3 x --trials.")] = DEFAULTS.max_trials,
    epochs: EpochsOpt = DEFAULTS.epochs,
    study: Annotated[str | None, typer.Option("--study", help="Study name (with --fixed-win the default name "
                                              "ends in -fixedwin).", show_default="<task>-<dataset>-<budget>")
                     ] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna RDB URL, e.g. postgresql://user@host/db for many hosts (docs/cluster.md).",
        show_default="sqlite:///<results-dir>/<study>/study.db")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of each trial's "
                                      "initialisation.")] = DEFAULTS.seed,
    device: DeviceOpt = Device[DEFAULTS.device],
    fixed_win: WinOpt = DEFAULTS.fixed_win,
    results_dir: Annotated[str, typer.Option(
        "--results-dir", help="Where studies and their files live.")] = DEFAULTS.results_dir,
    config: RunConfigOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes on this machine for this one "
                                         "study (GPUs round-robin, else the CPU cores shared); see "
                                         "docs/cluster.md.")] = 1,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the first configurations the sampler would train (up to --trials per family; "
        "a model-based sampler's first 10 only), each with its training time per epoch estimated from 3 timed "
        "steps here; train nothing, write nothing.")] = False,
    pack_size: Annotated[int, typer.Option(
        "--pack-size", min=0, help="Trials trained at once as one padded pack: 0 = as many as the GPU holds "
        "(one at a time on a CPU), 1 = one at a time; see docs/gpu.md.")] = DEFAULTS.pack_size,
    sampler: Annotated[SamplerName, typer.Option(
        "--sampler", help="How new configurations are drawn (docs/search-space.md); not part of the study's "
        "identity.")] = SamplerName[DEFAULTS.sampler],
    pruner: Annotated[PruneRule, typer.Option(
        "--pruner", help="Stop clearly dominated trials early at rungs of 1, 3, 9... epochs (none: train every "
        "trial in full); part of the study's identity; see notes/early-stopping.md.")] = PruneRule[DEFAULTS.pruning],
    timeout: Annotated[str | None, typer.Option(
        "--timeout", help="Stop cleanly after this long (90 is seconds; also 45s, 90m, 2h, 1h30m), as Ctrl-C "
        "does: the trial in progress continues from its last epoch on resume.", show_default="none")] = None,
) -> None:
    """Start or resume a budgeted Pareto search of both MLP families (the same command resumes)."""
    from hgsearch.config import parse_budget, parse_duration
    from hgsearch.stop import stop_on_signals

    cfg = config_file(ctx).build(
        budget=parse_budget(budget), task=task.value, dataset=dataset.value, data_dir=data_dir, download=download,
        image_size=image_size, augment=augment.value, train_size=train_size, family=family.value, trials=trials,
        epochs=epochs, study=study, storage=storage, seed=seed, device=device.value, fixed_win=fixed_win,
        results_dir=results_dir, pack_size=pack_size, pruning=pruner.value, sampler=sampler.value,
        until_settled=until_settled, max_trials=max_trials)
    seconds = parse_duration(timeout) if timeout is not None else None
    if dry_run:
        _dry_run(cfg)
        return
    from hgsearch.cli.progress import LiveDisplay, PlainProgress
    from hgsearch.config import format_budget
    from hgsearch.text import plural

    say(f"searching {cfg.family} on {cfg.task}/{cfg.dataset}, budget {format_budget(cfg.budget)} "
        f"({cfg.budget:,}), {plural(cfg.trials, 'trial')} per family, {plural(cfg.epochs, 'epoch')} each")
    # A live panel only on a terminal: in a log file (nohup, batch jobs, CI) it would be a garble of
    # redraws, so there each trial gets plain lines instead.
    progress = LiveDisplay(out, cfg.trials) if out.is_terminal else PlainProgress(sys.stdout, cfg.trials)
    # --timeout is a Ctrl-C sent to ourselves when the time is up: the same clean stop, with or
    # without --workers (the parent forwards it to its workers).
    timer = threading.Timer(seconds, _time_up) if seconds is not None else None
    try:
        with progress:
            if timer is not None:
                timer.daemon = True
                timer.start()
            if workers != 1:
                from hgsearch.search.workers import run_parallel

                run_parallel(cfg, workers, progress)
            else:
                from hgsearch.search.run import run_search

                with stop_on_signals(_stopping):
                    run_search(cfg, reporter=progress)
    except KeyboardInterrupt as e:
        if _timed_out:
            say(f"stopped at the --timeout of {_duration_text(timeout)}; the study is consistent and an unfinished "
                f"trial is queued to continue from its last epoch. Resume with: {_resume_command()}")
            return
        name = getattr(e, "signame", "SIGINT")
        err.print(f"stopped by {name}; the study is consistent and an unfinished trial is queued to continue "
                  f"from its last epoch. Resume with: {_resume_command()}", highlight=False, markup=False,
                  soft_wrap=True)
        raise typer.Exit(128 + signal.Signals[name].value) from None
    finally:
        if timer is not None:
            timer.cancel()
    _closing_table(cfg)


_timed_out: list[bool] = []  # set once run's --timeout has fired


def _duration_text(timeout: str | None) -> str:
    """--timeout as given, with plain seconds named: '90' -> '90 s', '10s' stays."""
    text = str(timeout).strip()
    return f"{text} s" if text.replace(".", "", 1).isdigit() else text


def _time_up() -> None:
    _timed_out.append(True)
    os.kill(os.getpid(), signal.SIGINT)


def _closing_table(cfg: Any) -> None:
    """run's last word: each frontier with the task's trivial baseline, and what to do next."""
    from hgsearch.data.tasks import load_task
    from hgsearch.results.tables import frontier_table
    from hgsearch.results.trials import load_frontier
    from hgsearch.training.baselines import baseline

    out.print(frontier_table(load_frontier(cfg.study_name, cfg.storage_url), baseline(load_task(cfg))))
    say(f"next: hgsearch frontier --study {cfg.study_name} --plot")


def _dry_run(cfg: Any) -> None:
    from hgsearch.config import format_budget
    from hgsearch.results.tables import df_table
    from hgsearch.search.preview import TIMED_STEPS, plan
    from hgsearch.text import plural

    planned, notes = plan(cfg, cfg.trials)
    for line in notes:
        say(f"note: {line}")
    rows = [{"family": p.family, "trial": p.number, "params": f"{p.spec.params:,}",
             "LxWxd_h": f"{p.spec.depth}x{p.spec.width}x{p.spec.bottleneck}", "lr": f"{p.lr:.1e}",
             "s/epoch": f"{p.epoch_seconds:.1f}"} for p in planned]
    import pandas as pd

    out.print(df_table(pd.DataFrame(rows), f"dry run: the first trials of a new study {cfg.study_name} "
                       f"(budget {format_budget(cfg.budget)})"))
    if planned:
        from hgsearch.data.tasks import resolve_device

        steps = planned[0].steps_per_epoch
        total = sum(p.epoch_seconds for p in planned) * cfg.epochs
        took = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} min"
        say(f"s/epoch: {plural(steps, 'step')} per epoch x the median of {TIMED_STEPS} timed training steps "
            f"of each shape on this machine ({resolve_device(cfg.device)}); these {plural(len(planned), 'trial')} "
            f"would train about {took} at {plural(cfg.epochs, 'epoch')} each (evaluation not included)")
    say("dry run: nothing was trained or written")


def _stopping(signame: str) -> None:
    """Called from the signal handler: say at once that the first signal was heard (no rich: re-entrancy)."""
    why = "--timeout reached" if _timed_out else signame
    os.write(2, f"{why}: stopping after the current step; press Ctrl-C again to stop at once\n".encode())


def _resume_command() -> str:
    """The command line that resumes this run, with any storage password masked."""
    from hgsearch.store.storage import safe_url

    def masked(arg: str) -> str:
        if "://" not in arg:
            return arg
        if arg.startswith("--") and "=" in arg:
            opt, _, url = arg.partition("=")
            return f"{opt}={safe_url(url)}"
        return safe_url(arg)

    return shlex.join(["hgsearch", *map(masked, sys.argv[1:])])


def _find(study: str | None, storage: str | None, results_dir: str) -> tuple[str, Path, str]:
    """Locate the study; when none was named, say on stderr which one was picked."""
    from hgsearch.store.studies import find_study

    name, out_dir, url, picked = find_study(study, storage, results_dir)
    if picked:
        note(f"using {picked}")
    return name, out_dir, url


@app.command(cls=Command, short_help="Compare the families and write a study's result files.")
def frontier(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    results_dir: ResultsDirOpt = "results",
    plot: Annotated[bool, typer.Option("--plot", help="Also draw the frontier, scaling, learning-curve and "
                                       "hypervolume-vs-trials figures (PNG and SVG); "
                                       "without it, figures of an earlier --plot are removed (they would be "
                                       "stale).")] = False,
    data_dir: StudyDataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the families (hypervolume, domination, gap per budget), say whether more trials would likely
    change the answer, and write frontier.csv, trials.csv, settled.csv and summary.json (and figures with
    --plot) for a study."""
    from hgsearch.results.analysis import analyze, summary, write_outputs
    from hgsearch.results.tables import analysis_tables, comparison_notes, settled_table
    from hgsearch.store.studies import remove_figures

    name, out_dir, url = _find(study, storage, results_dir)
    an = analyze(name, url, data_dir=data_dir)
    paths = write_outputs(an, out_dir, plot=plot)
    gone = [] if plot else remove_figures(out_dir)
    tell = note if as_json else say
    if as_json:
        print(json.dumps(summary(an), indent=2))
    else:
        for table in analysis_tables(an):
            out.print(table)
        for line in comparison_notes(an):
            say(f"note: {line}")
        if an.baseline_note:
            say(f"note: {an.baseline_note}")
    for p in paths:
        tell(f"wrote {p}")
    if gone:
        tell(f"removed {', '.join(p.name for p in gone)} of an earlier --plot (stale beside the new CSVs); "
             "run with --plot to draw them again")
    if not as_json:  # last, as the answer to "what next": summary.json holds the same under "settled"
        out.print(settled_table(an.settled))
        say(an.settled.headline())


@app.command(cls=Command, short_help="Show a study's state, or list the studies.")
def show(study: StudyOpt = None, storage: StorageOpt = None, results_dir: ResultsDirOpt = "results",
         as_json: JsonOpt = False) -> None:
    """A study's state: completed, running and failed trials per family, best PSNR, hours spent. Without
    --study and with several studies under --results-dir, a list of them."""
    from hgsearch.results.trials import study_state
    from hgsearch.store.studies import list_studies

    if study is None and storage is None:
        studies = list_studies(results_dir)
        if len(studies) > 1:
            _study_list(studies, results_dir, as_json)
            return
    name, _, url = _find(study, storage, results_dir)
    state = study_state(name, url)
    if as_json:
        print(json.dumps({"study": name, "families": json.loads(state.to_json(orient="records"))}, indent=2))
    else:
        from hgsearch.results.tables import state_table

        out.print(state_table(name, state))


def _study_list(studies: list, results_dir: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.to_dict() for s in studies], indent=2))
        return
    import pandas as pd

    from hgsearch.config import format_budget
    from hgsearch.results.tables import df_table

    rows = [{"study": s.name, "task": s.task or "-", "dataset": s.dataset or "-",
             "budget": format_budget(s.budget) if s.budget else "-",
             "trials done": "unreadable (see below)" if s.error else
             ", ".join(f"{f} {n}" for f, n in s.done.items()) or "0",
             "last change": s.changed.strftime("%Y-%m-%d %H:%M")} for s in studies]
    out.print(df_table(pd.DataFrame(rows), f"studies under {results_dir}/ (last changed last)"))
    for s in studies:
        if s.error:  # under the table: a long reason would squeeze its columns
            note(f"{s.name}: {s.error}")
    say("pass --study NAME to see one")


@app.command(cls=Command, short_help="Retrain the frontier's configurations with more seeds.")
def confirm(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per frontier point, K (the search's own run "
                                       "is the first).", show_default=False)],
    study: StudyOpt = None,
    storage: StorageOpt = None,
    results_dir: ResultsDirOpt = "results",
    data_dir: StudyDataDirOpt = None,
    device: Annotated[Device, typer.Option("--device", help="auto: CUDA when PyTorch sees one, else the CPU.")
                      ] = Device[DEFAULTS.device],
) -> None:
    """Retrain each frontier configuration with K seeds (kept in the storage; re-running is free) and
    print the frontier on seed means."""
    from hgsearch.events import Event, RunEnd, RunStart, SeedsStart
    from hgsearch.results.confirm import confirm_seeds
    from hgsearch.text import plural

    def seed_run(ev: Event) -> None:
        if isinstance(ev, SeedsStart):
            say(f"seed runs go to study {ev.study} in {ev.storage}")
        elif isinstance(ev, RunStart):
            r = ev.row
            out.print(f"  [{ev.index + 1}/{ev.total}] {r['family']} #{int(r['trial'])} "
                      f"({int(r['params']):,} params) seed {ev.seed} ...", end=" ", markup=False, highlight=False)
        elif isinstance(ev, RunEnd):
            say(f"failed: {ev.reason}" if ev.reason else
                f"val {ev.psnr_val:.2f} dB, test {ev.psnr_test:.2f} dB, {ev.seconds:.1f} s")

    name, _, url = _find(study, storage, results_dir)
    front = confirm_seeds(name, url, seeds, data_dir=data_dir, device=device.value, reporter=seed_run)
    say(f"frontier on seed means: {plural(len(front), 'point')} with {plural(int(front['n_seeds'].min()), 'seed')}"
        " or more each")
    say(f"next: hgsearch frontier --study {name} --plot, or hgsearch report --study {name}")


@app.command(cls=Command, short_help="Write a study's offline HTML report.")
def report(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    results_dir: ResultsDirOpt = "results",
    data_dir: StudyDataDirOpt = None,
    samples: Annotated[bool, typer.Option("--samples/--no-samples", help="Sample grids per frontier point "
                                          "(retrains points without saved weights).")] = True,
    device: Annotated[Device, typer.Option("--device", help="Where points without saved weights are retrained "
                                           "(auto: CUDA when PyTorch sees one, else the CPU).")
                      ] = Device[DEFAULTS.device],
) -> None:
    """Write results/<study>/report.html: one self-contained offline page with every figure and table."""
    from hgsearch.results.analysis import analyze
    from hgsearch.results.report import write_report

    name, out_dir, url = _find(study, storage, results_dir)
    an = analyze(name, url, data_dir=data_dir, device=device.value)
    say(f"wrote {write_report(an, out_dir, samples=samples)}")


@app.command(cls=Command, short_help="Train one configuration as a trial would.")
def train(
    ctx: typer.Context,
    family: Annotated[OneFamily, typer.Option("--family", help="Hourglass (wide stream, narrow branch) or "
                                              "conventional (stream at the image size, wide branch).",
                                              show_default=False)],
    depth: Annotated[int, typer.Option("--depth", min=1, help="Number of residual blocks L.", show_default=False)],
    bottleneck: Annotated[int, typer.Option("--bottleneck", min=1, help="Inner width d_h of each block's branch: "
                                            "under --width for hourglass, over it for conventional.",
                                            show_default=False)],
    width: Annotated[int | None, typer.Option(
        "--width", min=1, help="Stream width d_z; hourglass needs it wider than the image (784 values on 28x28), "
        "conventional's is the image size.", show_default="the image size, conventional only")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (decayed "
                                      "linearly to zero); the default is the middle, on a log scale, of the "
                                      "search's range 5e-5 to 5e-3.")] = TRAIN_LR,
    task: TaskOpt = Task[DEFAULTS.task],
    dataset: DatasetOpt = Dataset[DEFAULTS.dataset],
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = DEFAULTS.image_size,
    download: DownloadOpt = DEFAULTS.download,
    augment: AugmentOpt = Augment[DEFAULTS.augment],
    train_size: Annotated[int, typer.Option(
        "--train-size", help="Train on only N images (validation and test are unchanged); 0 = all.")
    ] = DEFAULTS.train_size,
    epochs: EpochsOpt = DEFAULTS.epochs,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation and the batch order.")
                    ] = DEFAULTS.seed,
    device: DeviceOpt = Device[DEFAULTS.device],
    fixed_win: WinOpt = DEFAULTS.fixed_win,
    config: TrainConfigOpt = None,
    save: Annotated[Path | None, typer.Option("--save", help="Write the trained weights (state_dict) here.",
                                                 show_default="not saved")] = None,
) -> None:
    """Train one configuration with the same code a trial uses; print its size, PSNRs beside the task's
    trivial baseline, and wall time."""
    from hgsearch.data.tasks import load_task
    from hgsearch.results.tables import psnr_verdict
    from hgsearch.search.run import train_single
    from hgsearch.text import plural
    from hgsearch.training.baselines import baseline

    cfg = config_file(ctx).build(task=task.value, dataset=dataset.value, data_dir=data_dir, download=download,
                                 image_size=image_size, augment=augment.value, train_size=train_size, epochs=epochs,
                                 seed=seed, device=device.value, fixed_win=fixed_win)
    data = load_task(cfg)
    spec, res = train_single(cfg, family=family.value, width=width, bottleneck=bottleneck, depth=depth, lr=lr,
                             save=save, data=data)
    say(f"{spec.family}: LxWxd_h {spec.depth}x{spec.width}x{spec.bottleneck} (depth, width, bottleneck), "
        f"{spec.params:,} parameters ({spec.trainable_params:,} trainable), lr {lr:g}")
    say(f"validation PSNR {res.psnr_val:.2f} dB, test PSNR {res.psnr_test:.2f} dB, "
        f"{plural(res.epochs, 'epoch')} in {res.seconds:.1f} s{psnr_verdict(res.psnr_val, baseline(data))}")
    if save:
        say(f"wrote {save}")


_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"}


def _flag_given_a_value(args: list[str]) -> UsageError | None:
    """`--plot true` or `--plot=true`: explain that a flag takes no value (Click's own message does not)."""
    command = typer.main.get_command(app)
    sub = getattr(command, "commands", {}).get(args[0]) if args else None
    if sub is None:
        return None
    flags = {opt: p for p in sub.params if getattr(p, "is_flag", False)
             for opt in (*p.opts, *p.secondary_opts)}
    for i, arg in enumerate(args):
        opt, eq, value = arg.partition("=")
        if opt in flags and (eq or (i + 1 < len(args) and args[i + 1].lower() in _BOOL_WORDS)):
            p = flags[opt]
            off = (f" and {p.secondary_opts[0]} to turn it off" if p.secondary_opts
                   else " and leave it out to turn it off")
            return UsageError(f"{opt} is a flag and takes no value: write {p.opts[0]} alone to turn it on{off} "
                              f"(see hgsearch {args[0]} --help)")
    return None


def _setup_process() -> None:
    """Process-wide settings that belong to the command line, not to the library (a notebook keeps its own)."""
    # hgsearch reports through its own display; Optuna's per-trial INFO lines would interleave with it.
    # logging.disable rather than optuna.logging.set_verbosity: that would import Optuna (~1 s) for --help.
    logging.disable(logging.INFO)
    quiet_optuna_rdb_logger()


def main() -> None:
    """Console entry point: every expected failure is one line on stderr and an exit code."""
    _setup_process()
    args = sys.argv[1:] or ["--help"]
    try:
        wrong = _flag_given_a_value(args)
        if wrong:
            raise wrong
        code = app(args=args, prog_name="hgsearch", standalone_mode=False)
    except HgsearchError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Abort:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except TyperException as e:  # option parsing: unknown option, missing value, wrong type
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "hgsearch"
        # Typer words a bad choice "Value error, 'x' is not one of ...": the prefix says nothing.
        message = e.format_message().replace("Value error, ", "")
        err.print(f"error: {message} (see {where} --help)", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code or 0)
