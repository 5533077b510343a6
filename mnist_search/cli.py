"""Typer commands: each parses its options, makes one library call, and prints.

Errors the user can fix are one line on stderr with exit code 2 (`fail`); a fault mid-run
(NaN loss, a tracking server that went away) is one line with exit code 1; an interrupt is 130.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

# Only light modules here: torch, MLflow and Optuna (~4 s to import on 2 cores) are imported by
# the commands that use them, so `--help` and usage errors answer at once (tests/test_cli.py).
from mnist_search.core.config import (
    DEFAULT_BUDGET,
    TARGET,
    default_search,
    load_experiment,
    load_search,
    load_spec,
)
from mnist_search.core.errors import USAGE_ERRORS, NonFiniteLoss
from mnist_search.core.settings import mask_url, resolve_tracking_uri
from mnist_search.workflows.runtime import (
    available_cores,
    check_device_name,
    default_jobs,
    interrupt_on_sigterm,
)

app = typer.Typer(
    help="Budget-constrained architecture search for tiny MNIST networks, tracked in MLflow.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    # Click's plain help: wraps at any width (80 columns too) and never cuts an option's name.
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)

MAX_SEED = 2**31 - 1  # trial n trains with seed + n: leave room below the generators' limits

# Options shared by several commands.
DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding MNIST/raw/ (default: $MNIST_SEARCH_DATA_DIR, else ./data)."),
]
LimitTrain = Annotated[
    int | None, typer.Option(min=1, help="Train on the first N training images only (smoke runs).")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store mlruns/)."),
]
Budget = Annotated[int, typer.Option(min=1, help="Parameter budget: models must have fewer parameters.")]
StudyName = Annotated[
    str | None,
    typer.Option("--study-name", "--study", help="Study name (default: the experiment name + budget)."),
]
Storage = Annotated[
    str | None,
    typer.Option(
        envvar="MNIST_SEARCH_STORAGE",
        help="Optuna storage: a journal file path (default mlruns/optuna-journal.log), sqlite:// or postgresql://"
        " ($MNIST_SEARCH_STORAGE keeps a password off your command line).",
    ),
]
ExperimentName = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_EXPERIMENT_NAME",
        help="MLflow experiment of the runs (default: mnist-search-studies, -train or -verify).",
    ),
]
ExperimentRef = Annotated[
    str,
    typer.Argument(help="Experiment YAML with a `spec` section: a path or a shipped name (seed-model-1)."),
]


class WarningLines(logging.Handler):
    """The library's warnings (logger "mnist_search"), one `warning: ...` line each."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"warning: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"mnist-search {version('mnist-search')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _console(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    log = logging.getLogger("mnist_search")
    log.handlers[:] = [WarningLines(err)]
    log.setLevel(logging.WARNING)
    log.propagate = False


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback, and a non-zero exit code (2: usage/config errors)."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def command_line(ctx: typer.Context) -> str:
    """The running command as the user gave it, options in declaration order (the ones given on
    the command line only, not defaults or environment), passwords in URLs masked: what a study
    and a verify record of how they were made."""
    words = ["mnist-search", ctx.info_name or ""]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words.append(flag if value else (param.secondary_opts or [flag])[0])
        else:
            for one in value if param.multiple else (value,):
                words += [flag, str(one)]
    return mask_url(shlex.join(words))


def checked(call, *args):
    """call(*args), a user's mistake (one of USAGE_ERRORS) ending the command as a one-line exit 2."""
    try:
        return call(*args)
    except USAGE_ERRORS as exc:
        fail(str(exc))


def _checked_jobs(device: str, jobs: int | None) -> int:
    """--jobs, or the default for --device; an unknown device name is refused here, before the
    command imports torch (seconds) to look at the devices."""
    checked(check_device_name, device)
    return checked(default_jobs, device) if jobs is None else jobs


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@app.command()
def summary(path: ExperimentRef, budget: Budget = DEFAULT_BUDGET) -> None:
    """Print the layer table, receptive field and mult-adds of a spec, without training."""
    _, spec = checked(load_spec, path)
    from mnist_search.core.model import (  # torch: after the check
        count_params,
        layer_table,
        mult_adds,
        receptive_field_table,
    )

    params = count_params(spec)
    out.print(layer_table(spec), markup=False, highlight=False)
    out.print()
    out.print(receptive_field_table(spec), markup=False, highlight=False)
    out.print()
    out.print(f"Mult-adds per image: {mult_adds(spec):,}", highlight=False)
    verdict = "under" if params < budget else "OVER"
    out.print(f"Parameters: {params:,} — {verdict} the budget of {budget:,}", highlight=False)


@app.command()
def train(
    path: ExperimentRef,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the recipe's epochs.")] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed for initialisation, shuffling and augmentation.")
    ] = 0,
    device: Device = "auto",
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    tracking_uri: TrackingUri = None,
    experiment_name: ExperimentName = None,
    budget: Budget = DEFAULT_BUDGET,
) -> None:
    """Train one spec and log it to MLflow (params, per-epoch metrics, tables, model, tags)."""
    checked(check_device_name, device)
    exp, _ = checked(load_spec, path)
    from mnist_search.core.model import count_params  # torch, MLflow: after the checks above
    from mnist_search.progress import EpochProgress
    from mnist_search.workflows.train import EXPERIMENT_NAME, TrainRequest, run_train

    request = TrainRequest(
        path, epochs, seed, device, _str(data_dir), limit_train, tracking_uri,
        experiment_name or EXPERIMENT_NAME, budget,
    )  # fmt: skip
    try:
        with EpochProgress(epochs or exp.recipe.epochs, out, label=exp.name or "train") as progress:
            run = run_train(request, on_epoch=progress.update)
    except USAGE_ERRORS as exc:
        fail(str(exc))
    except NonFiniteLoss as exc:
        fail(f"training failed: {exc}", code=1)
    except KeyboardInterrupt:
        err.print("interrupted: the MLflow run was marked FAILED", highlight=False)
        raise typer.Exit(130) from None
    last = run.result.epochs[-1]
    out.print(
        f"run {run.run_id}: {count_params(run.spec):,} params, epoch {last.epoch}: "
        f"val acc {last.val_acc:.4f}, test acc {last.test_acc:.4f}, "
        f"target met: {'yes' if run.result.target_met(TARGET) else 'no'} "
        f"({last.epoch_seconds:.1f} s/epoch on {run.device.type})",
        highlight=False,
    )
    _print_link(run.link)


@app.command()
def study(
    ctx: typer.Context,
    budget: Budget = DEFAULT_BUDGET,
    experiment: Annotated[
        str | None,
        typer.Option(
            help="Search experiment: a YAML path or a shipped name (budget-1k, budget-1k-separable, ... "
            "budget-8k). Default: the shipped one for the budget's size (the smallest of 1,000, 2,000, "
            "3,000, 5,000, 8,000 at least the budget): the family that verified best there.",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        int,
        typer.Option(
            min=1,
            help="The study's TOTAL of trained trials (all runs and workers together): running the "
            "same command again resumes the study up to this total; raise it to add trials. "
            "Over-budget proposals are rejected untrained and do not count.",
        ),
    ] = 20,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop starting trials after this many seconds.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs per trial (default: the recipe's).")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Seeds per trial, trained at once and scored by their mean (default: the recipe's).",
        ),
    ] = None,
    study_name: StudyName = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    device: Device = "auto",
    seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_SEED,
            help="Sampler seed; trial n trains seeds (seed + n) x K ... + K-1, K = --seeds.",
        ),
    ] = 0,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Plain log lines instead of the live display.")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="MNIST_SEARCH_JOBS",
            help="Worker processes here, cores/N torch threads each (default: one per core on "
            "the CPU, 1 on a GPU); other machines join via --storage.",
            show_default=False,
        ),
    ] = None,
    service_wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=86_400,
            envvar="MNIST_SEARCH_SERVICE_WAIT",
            help="Seconds to keep retrying a tracking server or database that is still starting.",
        ),
    ] = 0,
    experiment_name: ExperimentName = None,
) -> None:
    """Search architectures under --budget parameters; every trained trial is tracked in MLflow."""
    checked(load_search, experiment or default_search(budget))  # a typo answers before torch is imported
    jobs = _checked_jobs(device, jobs)
    from mnist_search.workflows.study import (  # torch, MLflow, Optuna: after the checks above
        EXPERIMENT_NAME,
        StudyRequest,
    )

    request = StudyRequest(
        budget=budget, experiment=experiment, trials=trials, timeout=timeout, epochs=epochs, seeds=seeds,
        study_name=study_name, storage=storage, tracking_uri=tracking_uri, device=device, seed=seed,
        data_dir=_str(data_dir), limit_train=limit_train, jobs=jobs, service_wait=service_wait,
        experiment_name=experiment_name or EXPERIMENT_NAME,
        command=command_line(ctx),
    )  # fmt: skip
    if experiment is None:  # recorded: the experiment the budget chose, not a default that may change
        request = request.model_copy(
            update={"command": f"{request.command} --experiment {request.experiment}"}
        )
    _run_study(request, quiet)


@app.command("study-worker", hidden=True)
def study_worker() -> None:
    """One of `study --jobs N`'s workers: the study's options arrive as JSON on standard input."""
    from mnist_search.workflows.study import StudyRequest

    _run_study(StudyRequest.model_validate_json(sys.stdin.read()), quiet=True, worker=True)


def _run_study(request, quiet: bool, worker: bool = False) -> None:
    from mnist_search.progress import StudyProgress, study_summary
    from mnist_search.search.leaderboard import completed, leaderboard
    from mnist_search.search.studies import StudyMismatch
    from mnist_search.tracking.client import runs_link
    from mnist_search.workflows.study import REPEATS_TO_STOP, prepare_study, trial_tally, trials_training

    try:
        session = prepare_study(request)
    except (*USAGE_ERRORS, StudyMismatch) as exc:
        fail(str(exc))
    done = session.done
    if done >= request.trials:
        out.print(
            f"study {session.name} already has {done} trained trials (--trials {request.trials}); raise --trials to add more",
            highlight=False,
            soft_wrap=True,
        )
        return
    if not worker:
        where = f"on {session.device.type}"
        if request.jobs > 1:
            threads = max(1, available_cores() // request.jobs)
            where = (
                f"{request.jobs} worker processes, {threads} torch thread{'s' if threads > 1 else ''} each"
            )
        out.print(
            f"study {session.name}: {done}/{request.trials} trials done; {where}; "
            f"storage {mask_url(session.storage_url)}; tracking {mask_url(session.tracking.uri)}",
            highlight=False,
            soft_wrap=True,
        )

    def study_best():
        return next(iter(completed(leaderboard(session.study))), None)

    with StudyProgress(
        out,
        request.trials,
        done,
        quiet=quiet or request.jobs > 1,
        study_best=study_best,
        study_tally=lambda: trial_tally(session.study),
        study_training=lambda: trials_training(session.study),
    ) as progress:
        outcome = session.run(progress)
    if outcome.workers is not None:
        _workers_ended(session, outcome)
    if outcome.repeated_failure is not None:
        fail(
            f"{session.name}: the last {REPEATS_TO_STOP} trials failed with the same error ({outcome.repeated_failure}); "
            "the study stopped; fix the cause and re-run the same command to resume",
            code=1,
        )
    if outcome.tracking_failure is not None:
        fail(
            f"tracking server {mask_url(session.tracking.uri)} failed mid-study ({outcome.tracking_failure}); "
            f"the running trial was marked FAIL, {session.done} finished trials are kept in the study storage; "
            "re-run the same command to resume",
            code=1,
        )
    if not worker:  # a worker's summary would not be the study's: others may still be training
        out.print(study_summary(session.study, request.trials), highlight=False, soft_wrap=True)
        _print_link(runs_link(session.tracking))
    if outcome.status == "KILLED":
        err.print(
            "interrupted: the running trial was marked FAIL; run the same command to resume", highlight=False
        )
        raise typer.Exit(130)


def _print_link(link: str) -> None:
    if link:
        out.print(f"MLflow: {link}", markup=False, highlight=False, soft_wrap=True)


def _workers_ended(session, outcome) -> NoReturn:
    """`--jobs N`: the study's count, a line per worker that died, and the exit code."""
    from mnist_search.progress import study_summary
    from mnist_search.tracking.client import runs_link

    done, total = session.done, session.request.trials
    out.print(
        f"study {session.name}: {done}/{total} trials trained by {len(outcome.workers)} workers",
        highlight=False,
    )
    for w in outcome.dead_workers:
        then = "another worker trained its trial again" if done >= total else "its trial is queued again"
        err.print(
            f"warning: worker {w.index} (pid {w.pid}) {w.how}; {then}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    codes = [w.code for w in outcome.workers]
    if 130 in codes:
        err.print(
            "interrupted: the running trials were marked FAIL; run the same command to resume",
            highlight=False,
        )
        raise typer.Exit(130)
    if done >= total or not any(codes):  # the total, or every worker reached --timeout
        out.print(study_summary(session.study, total), highlight=False, soft_wrap=True)
        _print_link(runs_link(session.tracking))
        raise typer.Exit(0)
    if outcome.dead_workers:
        fail(
            f"{done}/{total} trials trained when the workers ended; re-run the same command to finish", code=1
        )
    raise typer.Exit(max(codes, key=abs) or 1)


@app.command()
def report(
    study_name: StudyName = None,
    storage: Storage = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Leaderboard of a study (ranked by validation) and its Pareto front of params vs accuracy."""
    import json

    from mnist_search.progress import print_report
    from mnist_search.search.leaderboard import feasible_share, leaderboard, pareto_front
    from mnist_search.search.records import StudyRecord
    from mnist_search.search.studies import load_study

    st = checked(load_study, study_name, storage)
    rows = leaderboard(st)
    front = pareto_front(rows)
    feasible, proposed = feasible_share(st)
    budget = StudyRecord.of(st).budget
    if as_json:
        payload = {"study": st.study_name, "budget": budget, "proposals": proposed, "feasible": feasible,
                   "trials": [r.to_dict() for r in rows], "pareto_front": [r.trial for r in front]}  # fmt: skip
        print(json.dumps(payload, indent=2))
        return
    print_report(out, f"study {st.study_name} — budget {budget}", rows, front, (feasible, proposed))


@app.command()
def frontier(
    results: Annotated[
        Path, typer.Option(help="The results folder: its budget-*/ folders, as `verify --out` wrote them.")
    ] = Path("results"),
) -> None:
    """Write the verified front (RESULTS/frontier.md and frontier.png): each results folder's
    params, test accuracy over seeds and goal, with the public results marked."""
    from mnist_search.workflows.frontier import goal_text, write_frontier

    points = checked(write_frontier, results)
    for p in points:
        verdict = {True: "held", False: "missed", None: "no goal"}[p.goal_met]
        out.print(
            f"< {p.budget:>5,}  {p.folder:<18} {p.params:>6,} params  {100 * p.mean:.2f} % ± {100 * p.std:.2f}  "
            f"worst seed {100 * p.worst:.2f} %  goal ({goal_text(p.goal)}) {verdict}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(f"written: {results / 'frontier.md'}, {results / 'frontier.png'}", highlight=False)


@app.command()
def export(
    study_name: StudyName = None,
    trial: Annotated[str, typer.Option(help="'best' (by validation) or a trial number.")] = "best",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the export into.")] = Path("export"),
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write a trial's model as a torch.export program (model.pt2), its state_dict, spec and tables."""
    from mnist_search.workflows.export import export_from_study

    row, written = checked(export_from_study, study_name, storage, trial, out_dir, tracking_uri)
    out.print(
        f"trial {row.trial} ({row.params:,} params) exported to {out_dir}: {', '.join(written)}",
        highlight=False,
    )


@app.command()
def verify(
    ctx: typer.Context,
    study_name: StudyName = None,
    top: Annotated[
        int, typer.Option(min=1, help="How many of the best trials (by validation) to retrain.")
    ] = 1,
    trial_numbers: Annotated[
        list[int] | None,
        typer.Option(
            "--trial",
            help="Retrain these trials instead of the top K (repeatable), e.g. one from the Pareto front.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per architecture (0, 1, ...).")] = 3,
    first_seed: Annotated[
        int,
        typer.Option(
            min=0,
            help="Start the seeds here (--first-seed 3 --seeds 3: seeds 3, 4, 5): a verified point "
            "checked on seeds it was not judged on.",
        ),
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per run.")] = 15,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    device: Device = "auto",
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write the best verified model, table and commands here.")
    ] = None,
    recipe_from: Annotated[
        str | None,
        typer.Option(
            help="Train with this experiment's recipe (a path or a shipped name) instead of the one the trials "
            "were trained with; each trial's searched knobs (lr, batch size, ...) still apply.",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="MNIST_SEARCH_JOBS",
            help="Worker processes (cores/N torch threads each), each training packs of seeds; the "
            "seeds are split into packs that keep every worker busy to the end (default: one per core "
            "on the CPU, 1 on a GPU).",
            show_default=False,
        ),
    ] = None,
    experiment_name: ExperimentName = None,
) -> None:
    """Retrain the top-K architectures of a study on all 60,000 training images with several
    seeds; log every run under a verify parent run and print test accuracy per seed, mean ± std."""
    # (Over 60 lines only through its option declarations: the body is one call and printing.)
    if recipe_from is not None:
        checked(load_experiment, recipe_from)  # a typo answers before torch is imported
    jobs = _checked_jobs(device, jobs)
    from mnist_search.progress import VerifyDisplay  # torch, MLflow, Optuna: after the checks above
    from mnist_search.tracking.client import TRACKING_FAILURES, short_reason
    from mnist_search.workflows.verify import EXPERIMENT_NAME, VerifyRequest, run_verify

    request = VerifyRequest(
        study_name, top, tuple(trial_numbers or ()), seeds, epochs, storage, tracking_uri, device,
        _str(data_dir), limit_train, out_dir, recipe_from, jobs, command_line(ctx),
        experiment_name or EXPERIMENT_NAME, first_seed,
    )  # fmt: skip
    try:
        report = run_verify(request, VerifyDisplay(out))
    except USAGE_ERRORS as exc:
        fail(str(exc))
    except NonFiniteLoss as exc:
        fail(f"training failed: {exc}", code=1)
    except TRACKING_FAILURES as exc:
        fail(
            f"tracking {mask_url(resolve_tracking_uri(tracking_uri, create=False))} failed mid-verify "
            f"({short_reason(exc)}); finished runs are kept, re-run verify for the table",
            code=1,
        )
    except KeyboardInterrupt:
        err.print("interrupted: the running seeds' MLflow runs were marked FAILED", highlight=False)
        raise typer.Exit(130) from None
    out.print(report.table, markup=False, highlight=False, soft_wrap=True)
    out.print(f"wall time {report.wall_seconds / 60:.1f} min", highlight=False)
    _print_link(report.link)
    if out_dir is not None:
        out.print(f"best verified model written to {out_dir}", highlight=False)


@app.command()
def server(
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow backend store (default: the local store mlruns/mlflow.db); e.g. postgresql+psycopg://user:pw@host/mlflow"
        ),
    ] = None,
    artifacts_destination: Annotated[
        str | None, typer.Option(help="Where the server keeps artifacts (default: mlruns/artifacts).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; 0.0.0.0 to serve other machines.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help="Host headers the server accepts (default: localhost, 127.0.0.1 and this machine's name)."
        ),
    ] = None,
) -> None:
    """Start an MLflow tracking server (the docker-compose `mlflow` service, without Docker)."""
    from mnist_search.tracking.client import server_command

    cmd, backend = server_command(backend_store_uri, artifacts_destination, host, port, allowed_hosts)
    err.print(f"mlflow server on http://{host}:{port} (backend {mask_url(backend)})", highlight=False)
    os.execv(sys.executable, cmd)


def main() -> None:
    """Console entry point: like `app()`, but usage errors (bad option values, unknown options)
    become one line on stderr with exit code 2 instead of Typer's multi-line box."""
    from typer.exceptions import TyperException  # base of Typer's (vendored click) usage errors

    # SIGTERM (docker stop, kill, a scheduler) takes the same clean path as Ctrl-C: the running
    # MLflow run ends FAILED (a study's trial FAIL, interrupted), and the command exits 130.
    interrupt_on_sigterm()
    try:
        code = app(standalone_mode=False, prog_name="mnist-search")
    except TyperException as exc:
        if not hasattr(exc, "format_message"):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help, not an error line
            out.print(exc.format_message(), markup=False, highlight=False, soft_wrap=True)
        else:
            err.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
