"""Typer commands: thin wrappers that parse, call the library, and print."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from . import env_defaults, tracking  # noqa: F401  (env_defaults first: MLflow reads it on import)
from .config import ArchSpec, ConfigError, Experiment, load_experiment
from .data import DataError, load_mnist
from .model import count_params, layer_table, mult_adds, receptive_field_table
from .progress import EpochProgress, StudyProgress
from .train import NonFiniteLoss, available_cores, configure_threads, resolve_device

app = typer.Typer(
    help="Budget-constrained architecture search for tiny MNIST networks, tracked in MLflow.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

# Options shared by every command that trains.
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


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback, and a non-zero exit code (2: usage/config errors)."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _experiment(path: Path) -> Experiment:
    try:
        return load_experiment(path)
    except ConfigError as exc:
        fail(str(exc))


def _device(name: str):
    """The torch device for --device, with torch's threads set for this machine's cores."""
    try:
        dev = resolve_device(name)
    except ValueError as exc:
        fail(str(exc))
    configure_threads()
    return dev


def _check_tracking(uri: str | None) -> None:
    try:
        tracking.check_tracking(tracking.resolve_tracking_uri(uri, create=False))
    except tracking.TrackingError as exc:
        fail(str(exc))


def _setup_tracking(uri: str | None, experiment_name: str) -> str:
    try:
        return tracking.setup(uri, experiment_name)
    except tracking.TrackingError as exc:
        fail(str(exc))


def _data(data_dir: Path | None, val_size: int, limit_train: int | None, dev):
    try:
        return load_mnist(data_dir, val_size=val_size, limit_train=limit_train).to(dev)
    except DataError as exc:
        fail(str(exc))


def _spec(path: Path) -> tuple[Experiment, ArchSpec]:
    exp = _experiment(path)
    if exp.spec is None:
        fail(f"{path}: no `spec` section (this is a search experiment; use `mnist-search study`)")
    return exp, exp.spec


@app.command()
def summary(
    path: Annotated[Path, typer.Argument(help="Experiment YAML with a `spec` section.")],
    budget: Budget = tracking.DEFAULT_BUDGET,
) -> None:
    """Print the layer table, receptive field and mult-adds of a spec, without training."""
    _, spec = _spec(path)
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
    path: Annotated[Path, typer.Argument(help="Experiment YAML with a `spec` section.")],
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the recipe's epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, shuffling and augmentation.")] = 0,
    device: Device = "auto",
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    tracking_uri: TrackingUri = None,
    experiment_name: Annotated[str, typer.Option(help="MLflow experiment.")] = "mnist-search-train",
    budget: Budget = tracking.DEFAULT_BUDGET,
) -> None:
    """Train one spec and log it to MLflow (params, per-epoch metrics, tables, model, tags)."""
    exp, spec = _spec(path)
    recipe = exp.recipe
    epochs = epochs or recipe.epochs
    dev = _device(device)
    _check_tracking(tracking_uri)
    data = _data(data_dir, recipe.val_size, limit_train, dev)
    _setup_tracking(tracking_uri, experiment_name)

    with EpochProgress(epochs, out, label=exp.name or "train") as progress:
        try:
            run_id, result, _ = tracking.tracked_fit(
                spec, data, recipe, dev, epochs=epochs, seed=seed, budget=budget,
                experiment_file=str(path), run_name=f"{exp.name}-s{seed}", tags={"kind": "train"},
                on_epoch=progress.update,
            )  # fmt: skip
        except NonFiniteLoss as exc:
            fail(f"training failed: {exc}", code=1)
        except KeyboardInterrupt:
            err.print("interrupted: the MLflow run was marked FAILED", highlight=False)
            raise typer.Exit(130) from None
    last = result.epochs[-1]
    out.print(
        f"run {run_id}: {count_params(spec):,} params, epoch {last.epoch}: "
        f"val acc {last.val_acc:.4f}, test acc {last.test_acc:.4f}, "
        f"target met: {'yes' if result.target_met(tracking.TARGET) else 'no'} "
        f"({last.epoch_seconds:.1f} s/epoch on {dev.type})",
        highlight=False,
    )


StudyName = Annotated[
    str | None,
    typer.Option("--study-name", "--study", help="Study name (default: the experiment name + budget)."),
]
Storage = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage: a journal file path (default mlruns/optuna-journal.log), sqlite:// or postgresql://."
    ),
]


def _open_storage(url: str | None):
    from .storage import StorageError, default_storage_url, open_storage

    try:
        return open_storage(url), url or default_storage_url()
    except StorageError as exc:
        fail(str(exc))


@app.command()
def study(
    budget: Budget = tracking.DEFAULT_BUDGET,
    experiment: Annotated[
        Path | None, typer.Option(help="Search experiment YAML (default: experiments/budget-8k.yaml).")
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
    study_name: StudyName = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option(help="Sampler seed; trial n trains with seed + n.")] = 0,
    data_dir: DataDir = None,
    limit_train: LimitTrain = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Plain log lines instead of the live display.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Local worker processes on this study (each with cores/N torch threads; one per GPU "
            "when several are present). Other machines join with the same command and --storage.",
        ),
    ] = 1,
) -> None:
    """Search architectures under --budget parameters; every trained trial is tracked in MLflow."""
    import optuna

    from .search import DEFAULT_STUDY_EXPERIMENT, BudgetError, FanOut, Objective, check_budget
    from .studies import StudyMismatch, TotalReached, open_study, trials_done

    path = experiment or DEFAULT_STUDY_EXPERIMENT
    exp = _experiment(path)
    if exp.search is None:
        fail(f"{path}: no `search` section (use `mnist-search train` for a fixed spec)")
    try:
        check_budget(exp.search, budget)
    except BudgetError as exc:
        fail(str(exc))
    dev = _device(device)
    epochs = epochs or exp.recipe.epochs
    # Everything that can be wrong is checked before anything is written to either store.
    _check_tracking(tracking_uri)
    data = _data(data_dir, exp.recipe.val_size, limit_train, dev)
    store, storage_url = _open_storage(storage)
    name = study_name or f"{exp.name}-b{budget}"
    exp_id = _setup_tracking(tracking_uri, "mnist-search-studies")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial; no tracebacks
    try:
        st = open_study(store, name, exp, budget, epochs, seed, str(path))
    except StudyMismatch as exc:
        fail(str(exc))
    done = trials_done(st)
    if done >= trials:
        out.print(
            f"study {name} already has {done} trained trials (--trials {trials}); raise --trials to add more"
        )
        return
    heartbeats = getattr(store, "get_heartbeat_interval", lambda: None)() is not None
    stopper = TotalReached(trials, heartbeats=heartbeats)
    tracker = tracking.StudyTracker(st, storage_url, budget, exp_id, str(path))
    if jobs > 1:
        worker_args = ["study", "--budget", str(budget), "--experiment", str(path), "--trials", str(trials),
                       "--epochs", str(epochs), "--study-name", name, "--storage", storage_url,
                       "--tracking-uri", tracking.resolve_tracking_uri(tracking_uri), "--device", device,
                       "--seed", str(seed), "--quiet"]  # fmt: skip
        worker_args += ["--timeout", str(timeout)] if timeout else []
        worker_args += ["--data-dir", str(data_dir)] if data_dir else []
        worker_args += ["--limit-train", str(limit_train)] if limit_train else []
        del data  # loaded only to validate it; each worker loads its own
        code = run_workers(worker_args, jobs)
        tracker.finish("FINISHED" if code == 0 else "KILLED")
        out.print(
            f"study {name}: {trials_done(st)}/{trials} trials trained by {jobs} workers", highlight=False
        )
        raise typer.Exit(code)
    progress = StudyProgress(out, trials, done, quiet=quiet)
    objective = Objective(
        exp.search,
        exp.recipe,
        budget,
        data,
        dev,
        FanOut(tracker, progress),
        epochs=epochs,
        seed=seed,
        slot=stopper.slot,
    )
    out.print(
        f"study {name}: {done}/{trials} trials done; storage {tracking.mask_url(storage_url)}; "
        f"tracking {tracking.mask_url(tracking.resolve_tracking_uri(tracking_uri))}",
        highlight=False,
        soft_wrap=True,
    )
    with progress:
        status, lost = _optimize(st, objective, stopper, timeout)
    try:
        tracker.finish(status)
    except tracking.TRACKING_FAILURES as exc:
        lost = lost or exc
    if lost is not None:
        fail(
            f"tracking server {tracking.mask_url(tracking.resolve_tracking_uri(tracking_uri))} failed "
            f"mid-study ({tracking.short_reason(lost)}); the running trial was marked FAIL, {trials_done(st)} "
            "finished trials are kept in the study storage; re-run the same command to resume",
            code=1,
        )
    out.print(_study_summary(st, trials), highlight=False, soft_wrap=True)
    if status == "KILLED":
        err.print(
            "interrupted: the running trial was marked FAIL; run the same command to resume", highlight=False
        )
        raise typer.Exit(130)


def _optimize(st, objective, stopper, timeout: float | None) -> tuple[str, Exception | None]:
    """Run trials until the study's total, the timeout or an interrupt (Ctrl-C or SIGTERM):
    ("FINISHED" | "KILLED" | "FAILED", the tracking failure that stopped it, if one did)."""
    import signal

    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        st.optimize(
            objective,
            timeout=timeout,
            callbacks=[stopper],
            catch=(NonFiniteLoss, _cuda_oom()),
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        return "KILLED", None
    except tracking.TRACKING_FAILURES as exc:
        # Policy: the tracking server went away. The running trial FAILs (Optuna) and the study
        # stops; completed trials stay in the study storage; re-running resumes once it is back.
        return "FAILED", exc
    return "FINISHED", None


def _study_summary(st, trials: int) -> str:
    """One line: trials trained, the share of proposals under budget, and the best trial."""
    from .search import feasible_share, leaderboard
    from .studies import trials_done

    feasible, proposed = feasible_share(st)
    line = (
        f"study {st.study_name}: {trials_done(st)}/{trials} trials trained; "
        f"{feasible}/{proposed} proposals under budget ({feasible / max(proposed, 1):.0%})"
    )
    best = next((r for r in leaderboard(st) if r["state"] == "COMPLETE"), None)
    if best:
        line += (
            f"; best trial {best['trial']}: {best['params']:,} params, val {best['val_acc']:.4f}, "
            f"test min(last 3) {best['test_acc_min_last3']:.4f}"
        )
    return line


def run_workers(args: list[str], jobs: int) -> int:
    """Start `jobs` worker processes (processes, not threads) and wait; returns their worst exit code."""
    import signal
    import subprocess

    import torch

    cores = available_cores()
    gpus = torch.cuda.device_count()
    procs = []
    for index in range(jobs):
        env = os.environ | {"MNIST_SEARCH_THREADS": str(max(1, cores // jobs))}  # N x threads <= cores
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        procs.append(subprocess.Popen([sys.executable, "-m", "mnist_search", *args], env=env))

    def forward(signum, frame):
        for p in procs:
            p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return max(codes, key=abs)


def _raise_interrupt(signum, frame) -> NoReturn:
    raise KeyboardInterrupt


def _cuda_oom() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError


def _load_study(study_name: str | None, storage: str | None):
    import optuna

    store, url = _open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)] if study_name is None else None
    if study_name is None:
        if len(names) != 1:
            fail(
                f"--study: choose one of {', '.join(names) or '(no studies in ' + tracking.mask_url(url) + ')'}"
            )
        study_name = names[0]
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        fail(f"--study {study_name}: no such study in {tracking.mask_url(url)}")


@app.command()
def report(
    study_name: StudyName = None,
    storage: Storage = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Leaderboard of a study (ranked by validation) and its Pareto front of params vs accuracy."""
    import json

    from rich.table import Table

    from .search import feasible_share, leaderboard, pareto_front

    st = _load_study(study_name, storage)
    rows = leaderboard(st)
    front = pareto_front(rows)
    feasible, proposed = feasible_share(st)
    if as_json:
        payload = {
            "study": st.study_name,
            "budget": st.user_attrs.get("budget"),
            "proposals": proposed,
            "feasible": feasible,
            "trials": rows,
            "pareto_front": [r["trial"] for r in front],
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=f"study {st.study_name} — budget {st.user_attrs.get('budget')}")
    for col in ("rank", "trial", "params", "MACs", "val", "test min3", "target", "ep", "state", "s"):
        table.add_column(col, justify="right", no_wrap=True)

    def f(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        table.add_row(
            str(r["rank"]), str(r["trial"]), f(r["params"], "{:,}"), f(r["mult_adds"] and r["mult_adds"] / 1e3, "{:,.0f}k"),
            f(r["val_acc"]), f(r["test_acc_min_last3"]), "yes" if r["target_met"] else "no",
            str(r["epochs_run"]), r["state"][:8], f(r["seconds"], "{:.0f}"),
        )  # fmt: skip
    (out if out.is_terminal else Console(width=120)).print(table)  # piped: don't squeeze to 80 columns
    out.print("Pareto front (smallest model per validation-accuracy level):", highlight=False)
    for r in front:
        out.print(f"  trial {r['trial']}: {r['params']:,} params, val {r['val_acc']:.4f}, "
                  f"test min(last 3) {f(r['test_acc_min_last3'])}", highlight=False)  # fmt: skip
    out.print(f"{feasible}/{proposed} proposals were under the budget.", highlight=False)


@app.command()
def export(
    study_name: StudyName = None,
    trial: Annotated[str, typer.Option(help="'best' (by validation) or a trial number.")] = "best",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the export into.")] = Path("export"),
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write a trial's model as a torch.export program (model.pt2), its state_dict, spec and tables."""
    from .export import ExportError, export_trial
    from .search import leaderboard

    st = _load_study(study_name, storage)
    rows = {r["trial"]: r for r in leaderboard(st)}
    if trial == "best":
        done = [r for r in rows.values() if r["state"] == "COMPLETE"]
        if not done:
            fail(f"study {st.study_name}: no completed trial to export")
        row = min(done, key=lambda r: r["rank"])
    else:
        if not trial.isdigit() or int(trial) not in rows or rows[int(trial)]["state"] != "COMPLETE":
            fail(f"--trial {trial}: not a completed trial of study {st.study_name}")
        row = rows[int(trial)]
    try:
        tracking.setup(tracking_uri, "mnist-search-studies")
        written = export_trial(row, out_dir)
    except (tracking.TrackingError, ExportError) as exc:
        fail(str(exc))
    out.print(
        f"trial {row['trial']} ({row['params']:,} params) exported to {out_dir}: {', '.join(written)}",
        highlight=False,
    )


@app.command()
def verify(
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
        Path | None,
        typer.Option(
            help="Train with this experiment file's recipe instead of the one the trials were trained "
            "with; each trial's searched knobs (lr, batch size, ...) still apply. For re-verifying "
            "found architectures after a recipe change.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Runs side by side in N worker processes (each with cores/N torch threads); one line "
            "per finished run instead of progress bars.",
        ),
    ] = 1,
) -> None:
    """Retrain the top-K architectures of a study on all 60,000 training images with several
    seeds; log every run under a verify parent run and print test accuracy per seed, mean ± std."""
    import shlex
    import time

    import mlflow

    from .config import ArchSpec, Recipe, experiment_to_yaml
    from .export import export_model
    from .search import leaderboard, with_searched_knobs
    from .verify import SeedRun, SeedTask, Verified, WorkerSetup, run_in_parallel, verify_table

    base_recipe = _experiment(recipe_from).recipe if recipe_from else None
    st = _load_study(study_name, storage)
    done = [r for r in leaderboard(st) if r["state"] == "COMPLETE"]
    if trial_numbers:
        by_number = {r["trial"]: r for r in done}
        missing = [n for n in trial_numbers if n not in by_number]
        if missing:
            fail(
                f"--trial {missing[0]}: not a completed, under-budget trial of study {st.study_name} "
                f"(completed: {', '.join(str(n) for n in sorted(by_number)) or 'none'})"
            )
        done = [by_number[n] for n in dict.fromkeys(trial_numbers)]  # in the order given, once each
    else:
        done = done[:top]
    if not done:
        fail(f"study {st.study_name}: no completed trial to verify")
    dev = _device(device)
    _check_tracking(tracking_uri)
    # All 60k training images: the validation split has done its job in the search.
    data = _data(data_dir, 0, limit_train, dev)
    exp_id = _setup_tracking(tracking_uri, "mnist-search-verify")
    budget = int(st.user_attrs.get("budget", tracking.DEFAULT_BUDGET))
    started = time.perf_counter()
    results: list[Verified] = []
    models = {}
    parent = mlflow.MlflowClient().create_run(
        exp_id,
        run_name=f"verify-{st.study_name}",
        tags={
            "kind": "verify",
            "study_name": st.study_name,
            "budget": str(budget),
            "git_commit": tracking.git_commit(),
        }
        | ({"recipe_from": str(recipe_from)} if recipe_from else {}),
    )
    experiment_file = str(recipe_from or st.user_attrs.get("experiment_file", ""))
    tasks: list[SeedTask] = []
    for row in done:
        spec = ArchSpec.model_validate(row["spec"])
        trial = st.trials[row["trial"]]
        recipe = Recipe.model_validate(trial.user_attrs["recipe"])
        if base_recipe is not None:
            recipe = with_searched_knobs(base_recipe, trial.params)
        recipe = recipe.model_copy(update={"val_size": 0, "epochs": epochs})
        results.append(Verified(row["trial"], spec, recipe, row["params"]))
        tags = {"kind": "verify-run", "trial_number": str(row["trial"]), "study_name": st.study_name}
        tasks += [
            SeedTask(len(tasks) + seed, row["trial"], spec, recipe, seed, f"verify-trial-{row['trial']}-seed-{seed}", tags)
            for seed in range(seeds)
        ]  # fmt: skip
    if jobs == 1:
        finished = _verify_here(tasks, data, dev, budget, experiment_file, parent.info.run_id)
    else:
        del data  # loaded only to validate it; each worker loads its own
        setup = WorkerSetup(
            max(1, available_cores() // min(jobs, len(tasks))), str(dev), str(data_dir) if data_dir else None,
            limit_train, tracking.resolve_tracking_uri(tracking_uri), "mnist-search-verify", budget,
            experiment_file, parent.info.run_id,
        )  # fmt: skip
        finished = _rebuilt(run_in_parallel(tasks, jobs, setup))
        out.print(
            f"{len(tasks)} runs in {min(jobs, len(tasks))} worker processes, torch threads each: {setup.threads}",
            highlight=False,
        )
    status = "FAILED"
    try:
        by_trial = {v.trial: v for v in results}
        for task, run_id, result, model in finished:
            by_trial[task.trial].runs.append(SeedRun(task.seed, run_id, result))
            models[(task.trial, task.seed)] = model
            out.print(
                f"trial {task.trial} seed {task.seed}: test {result.epochs[-1].test_acc:.4f}, "
                f"min(last 3) {result.test_min_last3:.4f}",
                highlight=False,
            )
        for v in results:
            v.runs.sort(key=lambda r: r.seed)
        status = "FINISHED"
    except NonFiniteLoss as exc:
        fail(f"training failed: {exc}", code=1)
    except tracking.TRACKING_FAILURES as exc:
        fail(
            f"tracking {tracking.mask_url(tracking.resolve_tracking_uri(tracking_uri))} failed mid-verify "
            f"({tracking.short_reason(exc)}); finished runs are kept, re-run verify for the table",
            code=1,
        )
    except KeyboardInterrupt:
        status = "KILLED"
        err.print("interrupted: the running seeds' MLflow runs were marked FAILED", highlight=False)
        raise typer.Exit(130) from None
    finally:
        finished.close()  # with --jobs: ends any worker still training (its run ends FAILED)
        with contextlib.suppress(*tracking.TRACKING_FAILURES):  # a server that went away: reported above
            mlflow.MlflowClient().set_terminated(parent.info.run_id, status)
    wall = time.perf_counter() - started
    table = verify_table(results, epochs)
    client = mlflow.MlflowClient()
    client.log_text(parent.info.run_id, table, "verify.md")
    best = max(results, key=lambda v: (v.held, v.mean))
    client.log_batch(
        parent.info.run_id,
        metrics=[
            mlflow.entities.Metric("best/test_acc_mean", best.mean, 0, 0),
            mlflow.entities.Metric("best/test_acc_std", best.std, 0, 0),
            mlflow.entities.Metric("best/params", best.params, 0, 0),
            mlflow.entities.Metric("wall_seconds", wall, 0, 0),
        ],
    )
    client.set_tag(parent.info.run_id, "target_held", str(best.held).lower())
    out.print(table, markup=False, highlight=False, soft_wrap=True)
    out.print(f"wall time {wall / 60:.1f} min", highlight=False)
    if out_dir is not None:
        seed_run = max(best.runs, key=lambda r: r.min_last3)
        export_model(models[(best.trial, seed_run.seed)], out_dir)
        (out_dir / "experiment.yaml").write_text(
            experiment_to_yaml(
                best.spec, best.recipe, f"study {st.study_name}, trial {best.trial}, as verified"
            )
        )
        (out_dir / "verify.md").write_text(
            f"# Verified: study {st.study_name}, trial {best.trial}\n\n{table}\n\n"
            f"Exported weights: seed {seed_run.seed} (MLflow run {seed_run.run_id}).\n"
            f"Wall time of this verify: {wall / 60:.1f} min on {dev.type}.\n\n"
            f"Command:\n\n    mnist-search verify {shlex.join(sys.argv[2:])}\n"
        )
        out.print(f"best verified model written to {out_dir}", highlight=False)


def _verify_here(tasks, data, dev, budget: int, experiment_file: str, parent_run_id: str):
    """`verify` runs one after another in this process, with a progress bar per run."""
    for task in tasks:
        with EpochProgress(task.recipe.epochs, out, label=f"trial {task.trial} seed {task.seed}") as progress:
            run_id, result, model = tracking.tracked_fit(
                task.spec, data, task.recipe, dev, epochs=task.recipe.epochs, seed=task.seed, budget=budget,
                experiment_file=experiment_file, run_name=task.run_name, tags=task.tags,
                on_epoch=progress.update, parent_run_id=parent_run_id,
            )  # fmt: skip
        yield task, run_id, result, model


def _rebuilt(runs):
    """Worker results carry weights, not modules: rebuild each model from its spec."""
    from .model import build_model

    try:
        for task, run_id, result, state in runs:
            model = build_model(task.spec)
            model.load_state_dict(state)
            yield task, run_id, result, model
    finally:
        runs.close()


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
    import socket

    store = tracking.store_dir()
    backend = backend_store_uri or f"sqlite:///{store / 'mlflow.db'}"
    artifacts = artifacts_destination or str(store / "artifacts")
    if backend.startswith("sqlite:"):
        store.mkdir(parents=True, exist_ok=True)
    hosts = allowed_hosts or ",".join(
        f"{h}{p}" for h in ("localhost", "127.0.0.1", socket.gethostname()) for p in ("", f":{port}")
    )
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
           "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--allowed-hosts", hosts]  # fmt: skip
    err.print(
        f"mlflow server on http://{host}:{port} (backend {tracking.mask_url(backend)})", highlight=False
    )
    os.execv(sys.executable, cmd)


def main() -> None:
    """Console entry point: like `app()`, but usage errors (bad option values, unknown options)
    become one line on stderr with exit code 2 instead of Typer's multi-line box."""
    import signal

    from typer.exceptions import TyperException  # base of Typer's (vendored click) usage errors

    # SIGTERM (docker stop, kill, a scheduler) takes the same clean path as Ctrl-C: the running
    # MLflow run ends FAILED (a study's trial FAIL, interrupted), and the command exits 130.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        if not hasattr(exc, "format_message"):
            raise
        err.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
