"""Typer commands: each parses its options, makes one library call, and prints.

Errors the user can fix are one line on stderr with exit code 2 (`fail`); a fault mid-run
(NaN loss, a tracking server that went away) is one line with exit code 1; an interrupt is 130.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from mnist_search import options as opt  # every option, declared once

# Only light modules here: torch, MLflow and Optuna (~4 s to import on 2 cores) are imported by
# the commands that use them, so `--help` and usage errors answer at once (tests/test_cli.py).
from mnist_search.core.config import (
    DEFAULT_BUDGET,
    DEFAULT_EPOCHS,
    DEFAULT_TRIALS,
    FRONT_SEARCH,
    FRONT_TRIALS,
    VERIFY_SEEDS,
    default_search,
    load_experiment,
    load_search,
    load_spec,
)
from mnist_search.core.errors import USAGE_ERRORS
from mnist_search.core.settings import mask_url
from mnist_search.log_lines import WarningLines
from mnist_search.workflows.runtime import check_device_name, default_jobs, handle_interrupts

app = typer.Typer(
    help="Budget-constrained architecture search for tiny MNIST networks, tracked in MLflow.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    # Click's plain help: wraps at any width (80 columns too) and never cuts an option's name.
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)


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


@contextmanager
def usage_errors():
    """Within the block, a user's mistake (one of USAGE_ERRORS) ends the command as a one-line exit 2."""
    try:
        yield
    except USAGE_ERRORS as exc:
        fail(str(exc))


def checked(call, *args):
    """call(*args), a user's mistake ending the command as a one-line exit 2."""
    with usage_errors():
        return call(*args)


def _checked_jobs(device: str, jobs: int | None) -> int:
    """--jobs, or the default for --device; an unknown device name is refused here, before the
    command imports torch (seconds) to look at the devices."""
    checked(check_device_name, device)
    return checked(default_jobs, device) if jobs is None else jobs


def _given(**options) -> dict:
    """The options given a value, by keyword (None: the request's own default)."""
    return {k: v for k, v in options.items() if v is not None}


def _say(line: str, stream: str = "out") -> None:
    (out if stream == "out" else err).print(line, markup=False, highlight=False, soft_wrap=True)


def _finish(end) -> None:
    """Print a command's outcome (`workflows.outcome.Outcome`) and exit with its code."""
    for stream, line in end.lines:
        _say(line, stream)
    if end.code:
        raise typer.Exit(end.code)


@app.command()
def summary(path: opt.ExperimentRef, budget: opt.Budget = DEFAULT_BUDGET) -> None:
    """Print the layer table, receptive field and mult-adds of a spec, without training; exit 1 when
    it is over --budget."""
    _, spec = checked(load_spec, path)
    from mnist_search.core.model import count_params, layer_table, mult_adds, receptive_field_table

    params = count_params(spec)
    for block in (
        layer_table(spec),
        "",
        receptive_field_table(spec),
        "",
        f"Mult-adds per image: {mult_adds(spec):,}",
    ):
        _say(block)
    _say(f"Parameters: {params:,} — {'under' if params < budget else 'OVER'} the budget of {budget:,}")
    if params >= budget:  # a verdict a script can test: over the budget is not a pass
        raise typer.Exit(1)


@app.command()
def train(
    path: opt.ExperimentRef,
    epochs: opt.TrainEpochs = None,
    seed: opt.TrainSeed = 0,
    device: opt.Device = "auto",
    data_dir: opt.DataDir = None,
    limit_train: opt.LimitTrain = None,
    tracking_uri: opt.TrackingUri = None,
    experiment_name: opt.ExperimentName = None,
    budget: opt.Budget = DEFAULT_BUDGET,
) -> None:
    """Train one spec and log it to MLflow (params, per-epoch metrics, tables, model, tags)."""
    checked(check_device_name, device)
    exp, _ = checked(load_spec, path)
    from mnist_search.progress import EpochProgress  # torch, MLflow: after the checks above
    from mnist_search.workflows.train import TrainRequest, train_command

    request = TrainRequest(**_given(
        experiment=path, epochs=epochs, seed=seed, device=device, data_dir=data_dir, limit_train=limit_train,
        tracking_uri=tracking_uri, experiment_name=experiment_name, budget=budget,
    ))  # fmt: skip
    # The display stops before a usage error's line is printed (usage_errors exits last).
    with (
        usage_errors(),
        EpochProgress(epochs or exp.recipe.epochs, out, label=exp.name or "train") as progress,
    ):
        end = train_command(request, progress.update)
    _finish(end)


@app.command()
def study(
    ctx: typer.Context,
    budget: opt.Budget = DEFAULT_BUDGET,
    experiment: opt.Experiment = None,
    trials: opt.Trials = DEFAULT_TRIALS,
    timeout: opt.Timeout = None,
    epochs: opt.TrialEpochs = None,
    replicas: opt.Replicas = None,
    seeds: opt.OldSeeds = None,
    study_name: opt.StudyName = None,
    storage: opt.Storage = None,
    tracking_uri: opt.TrackingUri = None,
    device: opt.Device = "auto",
    seed: opt.SamplerSeed = 0,
    data_dir: opt.DataDir = None,
    limit_train: opt.LimitTrain = None,
    quiet: opt.Quiet = False,
    jobs: opt.Jobs = None,
    service_wait: opt.ServiceWait = 0,
    experiment_name: opt.ExperimentName = None,
    fidelity: opt.Fidelity = "staged",
    verify: opt.VerifyAtEnd = True,
) -> None:
    """Search architectures under --budget parameters; every trained trial is tracked in MLflow."""
    checked(load_search, experiment or default_search(budget))  # a typo answers before torch is imported
    jobs = _checked_jobs(device, jobs)
    from mnist_search.workflows.study import StudyRequest  # torch, MLflow, Optuna: after the checks above

    request = StudyRequest(**_given(
        budget=budget, experiment=experiment, trials=trials, timeout=timeout, epochs=epochs,
        replicas=replicas or seeds, study_name=study_name, storage=storage, tracking_uri=tracking_uri,
        device=device, seed=seed, data_dir=data_dir, limit_train=limit_train, jobs=jobs,
        service_wait=service_wait, fidelity=fidelity, verify=verify,
        experiment_name=experiment_name, command=opt.command_line(ctx),
    ))  # fmt: skip
    _run_study(request, quiet)


@app.command()
def front(
    ctx: typer.Context,
    max_params: opt.MaxParams = DEFAULT_BUDGET,
    budgets: opt.Budgets = "1000,2000,3000,5000",
    experiment: opt.FrontExperiment = None,
    trials: opt.Trials = FRONT_TRIALS,
    timeout: opt.Timeout = None,
    epochs: opt.TrialEpochs = None,
    study_name: opt.StudyName = None,
    storage: opt.Storage = None,
    tracking_uri: opt.TrackingUri = None,
    device: opt.Device = "auto",
    seed: opt.SamplerSeed = 0,
    data_dir: opt.DataDir = None,
    limit_train: opt.LimitTrain = None,
    quiet: opt.Quiet = False,
    jobs: opt.Jobs = None,
    service_wait: opt.ServiceWait = 0,
    experiment_name: opt.ExperimentName = None,
    verify: opt.VerifyAtEnd = True,
) -> None:
    """Search every size up to --max-params in one study (validation score up, parameters down, each
    trial judged within its size band), then verify the best model under each budget."""
    from mnist_search.search.bands import Bands

    bands = checked(Bands.parse, budgets, max_params)
    checked(load_search, experiment or FRONT_SEARCH)  # a typo answers before torch is imported
    jobs = _checked_jobs(device, jobs)
    from mnist_search.workflows.study import StudyRequest  # torch, MLflow, Optuna: after the checks above

    request = StudyRequest(**_given(
        budget=bands.largest, budgets=bands.budgets, experiment=experiment or FRONT_SEARCH, trials=trials,
        timeout=timeout, epochs=epochs, study_name=study_name, storage=storage, tracking_uri=tracking_uri,
        device=device, seed=seed, data_dir=data_dir, limit_train=limit_train, jobs=jobs,
        service_wait=service_wait, verify=verify, experiment_name=experiment_name, command=opt.command_line(ctx),
    ))  # fmt: skip
    _run_study(request, quiet)


@app.command("study-worker", hidden=True)
def study_worker() -> None:
    """One of `study --jobs N`'s workers: the study's options arrive as JSON on standard input."""
    from mnist_search.workflows.runtime import worker_interrupts
    from mnist_search.workflows.study import StudyRequest

    worker_interrupts()  # Ctrl-C is the parent's to act on: it sends each worker SIGTERM, once

    _run_study(StudyRequest.model_validate_json(sys.stdin.read()), quiet=True, worker=True)


def _run_study(request, quiet: bool, worker: bool = False) -> None:
    from mnist_search.progress import StudyDisplay, VerifyDisplay
    from mnist_search.workflows.answer import announce, has_answer_to_verify, verify_best
    from mnist_search.workflows.runtime import rearm_interrupts
    from mnist_search.workflows.study import prepare_study, study_end

    session = checked(prepare_study, request)
    answer = request.verify and not worker
    if (line := session.finished_already()) is not None:
        _say(line)
        return _finish(verify_best(session, VerifyDisplay(out))) if answer else None
    if not worker:
        _say(session.header())
    with StudyDisplay.for_session(out, session, quiet=quiet or worker):
        outcome = session.run()
    end = study_end(session, outcome, worker)
    if not answer or end.code not in (0, 130) or not has_answer_to_verify(session.study):
        return _finish(end)
    for stream, line in end.lines:  # the study's end, then its answer
        _say(line, stream)
    rearm_interrupts()  # an interrupted study's cleanup is done: Ctrl-C now stops the verify
    _say(announce(session))
    _finish(verify_best(session, VerifyDisplay(out)))


@app.command()
def report(
    study_name: opt.StudyName = None,
    storage: opt.Storage = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Leaderboard of a study (ranked by validation) and its Pareto front of params vs accuracy."""
    from mnist_search.progress import print_report
    from mnist_search.workflows.report import study_report

    rep = checked(study_report, study_name, storage)
    if as_json:
        sys.stdout.write(json.dumps(rep.to_json(), indent=2) + "\n")
        return
    print_report(out, f"study {rep.study} — budget {rep.budget}", rep.rows, rep.front, rep.counts_line())


@app.command()
def frontier(
    results: opt.ResultsDir = Path("results"),
) -> None:
    """Write the verified front (RESULTS/frontier.md and frontier.png): each results folder's
    params, test accuracy over seeds and goal, with the public results marked."""
    from mnist_search.workflows.frontier import point_line, write_frontier

    for p in checked(write_frontier, results):
        _say(point_line(p))
    _say(f"written: {results / 'frontier.md'}, {results / 'frontier.png'}")


@app.command()
def export(
    study_name: opt.StudyName = None,
    trial: opt.ExportTrial = "best",
    out_dir: opt.ExportDir = Path("export"),
    storage: opt.Storage = None,
    tracking_uri: opt.TrackingUri = None,
) -> None:
    """Write a trial's model as a torch.export program (model.pt2), its state_dict, spec and tables."""
    from mnist_search.workflows.export import export_from_study

    row, written = checked(export_from_study, study_name, storage, trial, out_dir, tracking_uri)
    _say(f"trial {row.trial} ({row.params:,} params) exported to {out_dir}: {', '.join(written)}")


@app.command()
def repair(storage: opt.Storage = None) -> None:
    """Cut a study journal at its first line that is not a record, keeping every study as it was up
    to there (the file as it was is copied beside it)."""
    from mnist_search.workflows.repair import repair_journal

    _finish(checked(repair_journal, storage))


@app.command()
def verify(
    ctx: typer.Context,
    study_name: opt.StudyName = None,
    top: opt.Top = 1,
    trial_numbers: opt.TrialNumbers = None,
    seeds: opt.VerifySeeds = VERIFY_SEEDS,
    first_seed: opt.FirstSeed = 0,
    epochs: opt.VerifyEpochs = DEFAULT_EPOCHS,
    storage: opt.Storage = None,
    tracking_uri: opt.TrackingUri = None,
    device: opt.Device = "auto",
    data_dir: opt.DataDir = None,
    limit_train: opt.LimitTrain = None,
    out_dir: opt.OutDir = None,
    recipe_from: opt.RecipeFrom = None,
    jobs: opt.Jobs = None,
    experiment_name: opt.ExperimentName = None,
    resume: opt.Resume = False,
) -> None:
    """Retrain the top-K architectures of a study on all 60,000 training images with several
    seeds; log every run under a verify parent run and print test accuracy per seed, mean ± std."""
    if recipe_from is not None:
        checked(load_experiment, recipe_from)  # a typo answers before torch is imported
    jobs = _checked_jobs(device, jobs)
    from mnist_search.progress import VerifyDisplay  # torch, MLflow, Optuna: after the checks above
    from mnist_search.workflows.verify import VerifyRequest, verify_command

    request = VerifyRequest(**_given(
        study_name=study_name, top=top, trials=tuple(trial_numbers or ()), seeds=seeds, first_seed=first_seed,
        epochs=epochs, storage=storage, tracking_uri=tracking_uri, device=device, data_dir=data_dir,
        limit_train=limit_train, out_dir=out_dir, recipe_from=recipe_from, jobs=jobs, resume=resume,
        experiment_name=experiment_name, command=opt.command_line(ctx),
    ))  # fmt: skip
    _finish(checked(verify_command, request, VerifyDisplay(out)))


@app.command()
def server(
    backend_store_uri: opt.BackendStoreUri = None,
    artifacts_destination: opt.ArtifactsDestination = None,
    host: opt.Host = "127.0.0.1",
    port: opt.Port = 5000,
    allowed_hosts: opt.AllowedHosts = None,
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
    # MLflow run ends FAILED (a study's trial FAIL, interrupted), and the command exits 130. Ctrl-C
    # pressed again while that cleanup runs is ignored (no traceback, nothing left half-closed).
    handle_interrupts()
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
