"""Verification: retrain a study's top architectures on all 60,000 training images over several
seeds and report the test accuracy per seed (final and min of the last 3 epochs), mean ± std,
and whether the 99.4 % target held in every seed.

`run_verify(request, hooks) -> VerifyReport` chooses the trials, trains every (trial, seed) run
here or in a pool of worker processes (`--jobs N`), logs them under one verify parent run and
writes the outputs. The CLI only parses, calls and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol as Interface

import torch
from pydantic import Field

from mnist_search.core.config import (
    DEFAULT_EPOCHS,
    TARGET,
    VERIFY_SEEDS,
    ArchSpec,
    ConfigError,
    Recipe,
    check_name,
    experiment_to_yaml,
    load_experiment,
)
from mnist_search.core.data import load_mnist
from mnist_search.core.errors import NonFiniteLoss, RunFailed
from mnist_search.core.model import build_model, mult_adds
from mnist_search.core.results import EpochResult, FitResult
from mnist_search.core.settings import mask_url, resolve_tracking_uri
from mnist_search.search.leaderboard import TrialRow, completed, leaderboard
from mnist_search.search.records import UNRECORDED_DEVICE, StudyRecord, TrialRecord
from mnist_search.search.space import with_searched_knobs
from mnist_search.search.studies import load_study
from mnist_search.tracking import names
from mnist_search.tracking.client import (
    TRACKING_FAILURES,
    RunLog,
    Tracking,
    TrackingTarget,
    runs_link,
    short_reason,
    source_tags,
    tracking_target,
)
from mnist_search.tracking.history import checkpoint_model, finished_seed_runs, fit_result
from mnist_search.tracking.registry import crown
from mnist_search.training.teacher import check_teacher
from mnist_search.workflows.export import check_out_dir, export_model
from mnist_search.workflows.outcome import Outcome, fault
from mnist_search.workflows.request import RunRequest
from mnist_search.workflows.runtime import available_cores, check_jobs, setup_device
from mnist_search.workflows.schedule import plan_packs
from mnist_search.workflows.train import train_into_runs

DESCRIPTION = (
    "mnist-search verify: the best trials of a study retrained on all 60,000 training images, once "
    "per seed, and scored on the test set. Each verify is a parent run (its table in verify.md) "
    "with a child run per trial and seed; the best is registered as `champion`."
)


@dataclass
class SeedRun:
    seed: int
    run_id: str
    result: FitResult

    @property
    def final(self) -> float:
        return self.result.epochs[-1].test_acc

    @property
    def min_last3(self) -> float:
        return self.result.test_min_last3


@dataclass
class Verified:
    trial: int
    spec: ArchSpec
    recipe: Recipe
    params: int
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(r.final for r in self.runs)

    @property
    def std(self) -> float:
        return statistics.stdev(r.final for r in self.runs) if len(self.runs) > 1 else 0.0

    @property
    def held(self) -> bool:
        """Target held in every seed: test acc >= 99.4 % in each of the last 3 epochs."""
        return bool(self.runs) and all(r.result.target_met(TARGET) for r in self.runs)


@dataclass(frozen=True)
class Protocol:
    """What a verify's runs train on. The full protocol (the one a claim and `@champion` rest on):
    all 60,000 training images, at least the task's 15 epochs, at least 3 seeds."""

    images: int
    epochs: int
    seeds: int

    @property
    def full(self) -> bool:
        return (
            self.images >= FULL_TRAIN_IMAGES and self.epochs >= DEFAULT_EPOCHS and self.seeds >= VERIFY_SEEDS
        )

    @property
    def tag(self) -> str:
        """Runs trained alike carry the same tag (a resumed verify reuses them): images and epochs."""
        return f"{self.images} images, {self.epochs} epochs"

    def __str__(self) -> str:
        kind = "full protocol" if self.full else "not the full protocol"
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return f"{self.images:,} images, {self.epochs} epochs, {seeds} ({kind})"


FULL_TRAIN_IMAGES = 60_000


def best_seed(v: Verified) -> SeedRun:
    """The seed whose model is exported and registered: the best min of the last 3 epochs."""
    return max(v.runs, key=lambda r: r.min_last3)


def verify_table(rows: list[Verified], epochs: int) -> str:
    """Markdown: one line per architecture and seed, then mean ± std and the verdict."""
    out = [
        f"| trial | params | seed | test acc, epoch {epochs} | test acc, min of last 3 | target held |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for v in rows:
        for r in v.runs:
            out.append(
                f"| {v.trial} | {v.params:,} | {r.seed} | {r.final:.4f} | {r.min_last3:.4f} | "
                f"{'yes' if r.result.target_met(TARGET) else 'no'} |"
            )
        out.append(
            f"| **{v.trial}** | **{v.params:,}** | mean ± std | **{v.mean:.4f} ± {v.std:.4f}** | "
            f"{min(r.min_last3 for r in v.runs):.4f} (worst) | **{'yes, every seed' if v.held else 'no'}** |"
        )
    return "\n".join(out)


@dataclass(frozen=True)
class SeedPack:
    """One pack of verify runs: a trial's architecture and recipe, trained with several seeds at
    once (packed replicas), each seed its own MLflow run."""

    index: int  # position in the verify plan (results come back in any order)
    trial: int
    spec: ArchSpec
    recipe: Recipe
    seeds: tuple[int, ...]
    tags: dict[str, str]

    def run_name(self, seed: int) -> str:
        return f"verify-trial-{self.trial}-seed-{seed}"

    @property
    def label(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        return f"trial {self.trial} seed{'s' if len(self.seeds) > 1 else ''} {seeds}"


class VerifyRequest(RunRequest):
    study_name: str | None = None
    top: int = Field(1, gt=0)
    trials: tuple[int, ...] = ()  # named trials instead of the top K
    seeds: int = Field(VERIFY_SEEDS, gt=0)  # seeds per architecture: first_seed, first_seed + 1, ...
    first_seed: int = Field(0, ge=0)  # fresh seeds for a point already verified
    epochs: int = Field(DEFAULT_EPOCHS, gt=0)
    storage: str | None = None
    out_dir: Path | None = None
    recipe_from: str | None = None
    jobs: int = Field(1, gt=0)
    resume: bool = False  # reuse the seed runs an earlier verify of the same protocol finished
    budget: int | None = Field(
        None, gt=0
    )  # registered under this budget; None: the study's (a front's: one of its)
    experiment_name: str = names.EXPERIMENTS["verify"]


@dataclass
class VerifyReport:
    study_name: str
    results: list[Verified]
    table: str
    wall_seconds: float
    device: str
    best: Verified
    parent_run_id: str
    link: str  # the experiment's runs in MLflow's UI
    budget: int = 0  # the study's
    search: dict = field(default_factory=dict)  # the study's command and compute (search_summary)
    protocol: Protocol | None = None  # what the runs trained on
    version: str | None = None  # the registered version of the best
    champion: bool = False  # is that version @champion now
    reused: int = 0  # seed runs an earlier, interrupted verify had finished


class VerifyHooks(Interface):
    """What the CLI shows while runs train, here or in worker processes alike."""

    def pack_progress(self, task: SeedPack, epoch: int, share: float, test_acc: float | None) -> None:
        """A pack trains `epoch` (1-based), `share` of all its epochs done; `test_acc`: its seeds'
        mean test accuracy after an epoch that just ended (None between epochs)."""

    def packs_ended(self) -> None:
        """No pack trains any more (all done, or stopped)."""

    def run_finished(self, task: SeedPack, seed: int, result: FitResult) -> None: ...

    def pool_started(self, packs: int, workers: int, threads: int) -> None: ...


def run_verify(request: VerifyRequest, hooks: VerifyHooks) -> VerifyReport:
    """Check, train every (trial, seed), report. Raises ConfigError & co. (exit 2) before
    anything is written; NonFiniteLoss, a tracking failure (as RunFailed) or KeyboardInterrupt
    mid-way end the parent run (FAILED / KILLED) and every running seed's run FAILED."""
    try:
        return _run_verify(request, hooks)
    except TRACKING_FAILURES as exc:
        uri = mask_url(resolve_tracking_uri(request.tracking_uri, create=False))
        raise RunFailed(
            f"tracking {uri} failed mid-verify ({short_reason(exc)}); "
            "finished runs are kept, re-run verify for the table"
        ) from None


def verify_command(request: VerifyRequest, hooks: VerifyHooks) -> Outcome:
    """`mnist-search verify`: the table, the wall time, the link and where the model went. A
    user's mistake raises (exit 2, nothing written); a NaN loss, a lost tracking server or an
    interrupt is the outcome (the running seeds' runs FAILED, what finished kept)."""
    try:
        report = run_verify(request, hooks)
    except (NonFiniteLoss, RunFailed, KeyboardInterrupt) as exc:
        return fault(exc, "the running seeds' MLflow runs were marked FAILED")
    end = Outcome()
    if report.reused:
        end.say(f"{report.reused} seed run(s) reused: finished by an earlier verify of the same protocol")
    end.say(report.table).say(f"wall time {report.wall_seconds / 60:.1f} min; {report.protocol}")
    end.say_link(report.link)
    return end.say(f"best verified model written to {request.out_dir}") if request.out_dir else end


def _run_verify(request: VerifyRequest, hooks: VerifyHooks) -> VerifyReport:
    if request.out_dir is not None:
        check_out_dir(request.out_dir)
    check_name("--experiment-name", request.experiment_name)
    if request.jobs > 1:
        check_jobs(request.jobs)
    base_recipe = load_experiment(request.recipe_from).recipe if request.recipe_from else None
    study = load_study(request.study_name, request.storage)
    rows = _choose(study, request)
    results, tasks = _plan(study, rows, request, base_recipe)
    for v in results:  # a teacher that moved or broke since the search: say so before writing
        check_teacher(v.recipe)
    device = setup_device(request.device)
    target = tracking_target(request.tracking_uri)
    # All 60k training images: the validation split has done its job in the search.
    data = load_mnist(request.data_dir, val_size=0, limit_train=request.limit_train)
    tracking = target.open(request.experiment_name, DESCRIPTION)
    record = StudyRecord.of(study)
    budget = request.budget or record.budget or 0
    experiment_file = str(request.recipe_from or record.experiment_file or "")
    started = time.perf_counter()
    parent = tracking.client.create_run(
        tracking.experiment_id,
        run_name=f"verify-{study.study_name}",
        tags={
            "kind": "verify",
            "study_name": study.study_name,
            "budget": str(budget),
        }
        | source_tags("verify")
        | ({"recipe_from": str(request.recipe_from)} if request.recipe_from else {}),
    )
    parent_id = parent.info.run_id
    protocol = Protocol(len(data.train), request.epochs, request.seeds)
    tasks = [replace(t, tags=t.tags | {"protocol": protocol.tag}) for t in tasks]
    reused = (
        _reuse_finished(tasks, results, tracking) if request.resume else {v.trial: set() for v in results}
    )
    left = [(t, tuple(s for s in t.seeds if s not in reused[t.trial])) for t in tasks]
    tasks = [replace(t, index=i, seeds=seeds) for i, (t, seeds) in enumerate((t, s) for t, s in left if s)]
    here = min(request.jobs, len(tasks)) <= 1  # one pack (or one worker): no pool to start
    context = _RunContext(
        tracking, data.to(device) if here else None, device, budget, experiment_file, parent_id
    )
    models = _train_all(tasks, results, request, context, hooks)
    wall = time.perf_counter() - started
    report = _report(
        study.study_name,
        results,
        request.epochs,
        wall,
        str(device.type),
        parent_id,
        tracking,
        budget,
        protocol,
    )
    report.search = search_summary(study)
    report.reused = sum(len(seeds) for seeds in reused.values())
    if request.out_dir is not None:
        _write_out(report, models, request, tracking)
    return report


def _reuse_finished(
    tasks: list[SeedPack], results: list[Verified], tracking: Tracking
) -> dict[int, set[int]]:
    """The seed runs an earlier verify of the same trials finished under the same protocol (one
    interrupted by Ctrl-C, then run again): read back into `results`, not trained again.
    {trial: its seeds reused}."""
    by_trial = {v.trial: v for v in results}
    reused: dict[int, set[int]] = {v.trial: set() for v in results}
    for task in tasks:
        done = finished_seed_runs(tracking.client, tracking.experiment_id, task.tags)
        for seed in task.seeds:
            if seed in done:
                result = fit_result(tracking.client, done[seed])
                if len(result.epochs) == task.recipe.epochs:
                    by_trial[task.trial].runs.append(SeedRun(seed, done[seed], result))
                    reused[task.trial].add(seed)
    return reused


def _choose(study, request: VerifyRequest) -> list[TrialRow]:
    done = completed(leaderboard(study))
    if request.trials:
        by_number = {r.trial: r for r in done}
        missing = [n for n in request.trials if n not in by_number]
        if missing:
            raise ConfigError(
                f"--trial {missing[0]}: not a completed, under-budget trial of study {study.study_name} "
                f"(completed: {', '.join(str(n) for n in sorted(by_number)) or 'none'})"
            )
        done = [by_number[n] for n in dict.fromkeys(request.trials)]  # in the order given, once each
    else:
        done = done[: request.top]
    if not done:
        raise ConfigError(f"study {study.study_name}: no completed trial to verify")
    return done


def _plan(study, rows: list[TrialRow], request: VerifyRequest, base_recipe: Recipe | None):
    results: list[Verified] = []
    for row in rows:
        spec = ArchSpec.model_validate(row.spec)
        trial = study.trials[row.trial]
        recipe = Recipe.model_validate(TrialRecord.of(trial).recipe)
        if base_recipe is not None:
            recipe = with_searched_knobs(base_recipe, trial.params)
        recipe = recipe.model_copy(update={"val_size": 0, "epochs": request.epochs})
        results.append(Verified(row.trial, spec, recipe, row.params))
    # Time per seed ~ multiply-adds per image: the split keeps every worker busy to the end.
    plan = plan_packs([mult_adds(v.spec) for v in results], request.seeds, request.jobs)
    tasks = []
    for index, (i, seeds) in enumerate(plan):
        v, seeds = results[i], tuple(request.first_seed + s for s in seeds)
        tags = {"kind": "verify-run", "trial_number": str(v.trial), "study_name": study.study_name,
                "recipe_from": str(request.recipe_from or "")}  # fmt: skip
        tasks.append(SeedPack(index, v.trial, v.spec, v.recipe, seeds, tags))
    return results, tasks


@dataclass(frozen=True)
class _RunContext:
    tracking: Tracking
    data: object  # MNISTData on the device; None when the runs go to worker processes
    device: torch.device
    budget: int
    experiment_file: str
    parent_run_id: str


def _train_all(tasks, results, request: VerifyRequest, ctx: _RunContext, hooks: VerifyHooks) -> dict:
    """Every task, here or in the pool; the parent run ends FINISHED, KILLED or FAILED."""
    if ctx.data is not None:
        finished = _here(tasks, ctx, hooks)
    else:
        workers = min(request.jobs, len(tasks))
        setup = WorkerSetup(
            max(1, available_cores() // workers), str(ctx.device), request.data_dir, request.limit_train,
            ctx.tracking.uri, request.experiment_name, ctx.budget, ctx.experiment_file, ctx.parent_run_id,
        )  # fmt: skip
        hooks.pool_started(len(tasks), workers, setup.threads)
        finished = _rebuilt(run_in_parallel(tasks, request.jobs, setup, hooks.pack_progress))
    status, models = "FAILED", {}
    by_trial = {v.trial: v for v in results}
    try:
        for task, runs in finished:
            for seed, run_id, result, model in runs:
                by_trial[task.trial].runs.append(SeedRun(seed, run_id, result))
                models[(task.trial, seed)] = model
                hooks.run_finished(task, seed, result)
        for v in results:
            v.runs.sort(key=lambda r: r.seed)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        finished.close()  # with --jobs: ends any worker still training (its runs end FAILED)
        hooks.packs_ended()
        with contextlib.suppress(*TRACKING_FAILURES):  # a server that went away: the caller reports it
            ctx.tracking.client.set_terminated(ctx.parent_run_id, status)
    return models


def _here(tasks, ctx: _RunContext, hooks: VerifyHooks) -> Iterator:
    """The packs one after another in this process."""
    for task in tasks:
        feed = PackFeed(task.recipe.epochs, lambda *progress, task=task: hooks.pack_progress(task, *progress))
        runs = _train_pack(task, ctx.tracking, ctx.data, ctx.device, ctx.budget, ctx.experiment_file,
                           ctx.parent_run_id, feed)  # fmt: skip
        yield task, runs


class PackFeed:
    """A pack's progress for a display, as (epoch training, share of its epochs, mean test accuracy
    of the epoch that just ended or None): at each epoch's end, and at most every `every` seconds
    within one. `send` is the display's hook here, a queue to the parent in a worker."""

    def __init__(self, epochs: int, send: Callable, every: float = 2.0):
        self.epochs, self.send, self.every, self.last = epochs, send, every, time.monotonic()

    def epoch(self, results: list[EpochResult]) -> None:
        e = results[0].epoch
        self.send(min(e + 1, self.epochs), e / self.epochs, statistics.fmean(r.test_acc for r in results))

    def step(self, epoch: int, share_of_epoch: float) -> None:
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.send(epoch, (epoch - 1 + share_of_epoch) / self.epochs, None)


def _train_pack(
    task: SeedPack,
    tracking,
    data,
    device,
    budget,
    experiment_file,
    parent_run_id,
    feed: PackFeed | None = None,
):
    """[(seed, run id, FitResult, model)] of one pack."""
    runs = train_into_runs(
        tracking, task.spec, data, task.recipe, device, seeds=list(task.seeds), budget=budget,
        experiment_file=experiment_file, run_names=[task.run_name(s) for s in task.seeds], tags=task.tags,
        on_epoch=feed and feed.epoch, on_step=feed and feed.step, parent_run_id=parent_run_id,
    )  # fmt: skip
    return [(seed, *run) for seed, run in zip(task.seeds, runs)]


def _rebuilt(runs) -> Iterator:
    """Worker results carry weights, not modules: rebuild each model from its spec."""
    try:
        for task, states in runs:
            rebuilt = []
            for seed, run_id, result, state in states:
                model = build_model(task.spec)
                model.load_state_dict(state)
                rebuilt.append((seed, run_id, result, model))
            yield task, rebuilt
    finally:
        runs.close()


def _report(
    name, results, epochs, wall, device, parent_id, tracking: Tracking, budget: int, protocol: Protocol
) -> VerifyReport:
    table = verify_table(results, epochs)
    best = max(results, key=lambda v: (v.held, v.mean))
    client = tracking.client
    version, champion = None, False
    if budget:  # the verified best (its best seed, as exported) into the registry
        seed_run = best_seed(best)
        version, champion = crown(
            client, seed_run.run_id, budget, best.held and protocol.full, best.mean,
            tags={"study": name, "trial": str(best.trial), "seed": str(seed_run.seed), "params": str(best.params),
                  "protocol": str(protocol)},
            table=f"Verified: study {name}, trial {best.trial}, seed {seed_run.seed}; {protocol}.\n\n{table}",
        )  # fmt: skip
        client.set_tag(parent_id, "registered_version", version)
        client.set_tag(parent_id, "champion", str(champion).lower())
    client.set_tag(parent_id, "protocol", str(protocol))
    client.log_text(parent_id, table, "verify.md")
    RunLog(client, parent_id).metrics(
        {
            "best/test_acc_mean": best.mean,
            "best/test_acc_std": best.std,
            "best/params": best.params,
            "wall_seconds": wall,
        }
    )
    client.set_tag(parent_id, "target_held", str(best.held).lower())
    return VerifyReport(
        name, results, table, wall, device, best, parent_id, runs_link(tracking), budget,
        protocol=protocol, version=version, champion=champion,
    )  # fmt: skip


def _write_out(report: VerifyReport, models: dict, request: VerifyRequest, tracking: Tracking) -> None:
    """The best verified model (its best seed), its experiment file and the verify table."""
    best, out_dir = report.best, request.out_dir
    seed_run = best_seed(best)
    model = models.get((best.trial, seed_run.seed))
    if model is None:  # trained by an earlier, interrupted verify: its checkpoint
        model = checkpoint_model(tracking.client, seed_run.run_id, best.spec)
    export_model(model, out_dir)
    (out_dir / "experiment.yaml").write_text(
        experiment_to_yaml(
            best.spec, best.recipe, f"study {report.study_name}, trial {best.trial}, as verified"
        )
    )
    (out_dir / "verify.md").write_text(
        f"# Verified: study {report.study_name}, trial {best.trial}\n\n{report.table}\n\n"
        f"Exported weights: seed {seed_run.seed} (MLflow run {seed_run.run_id}).\n"
        f"Wall time of this verify: {report.wall_seconds / 60:.1f} min on {report.device}.\n\n"
        f"Command:\n\n    {request.command}\n"
    )
    (out_dir / "verify.json").write_text(json.dumps(verify_record(report, request.command), indent=1) + "\n")


def search_summary(study) -> dict:
    """The search behind a verify: the command that created the study (when it recorded one),
    its proposals, and the trials that trained (pruned and interrupted ones too: compute spent)
    with their summed wall time and the devices they trained on ("not recorded" for trials made
    before trials recorded their device: a study resumed elsewhere mixes both)."""
    trials = study.get_trials(deepcopy=False)
    records = [TrialRecord.of(t) for t in trials]
    trained = [r for r in records if r.feasible and r.seconds is not None]
    devices = sorted({r.device for r in trained if r.device})
    if any(not r.device for r in trained):
        devices.append(UNRECORDED_DEVICE)
    return {
        "study": study.study_name,
        "command": StudyRecord.of(study).command,
        "proposals": len(trials),
        "trained": len(trained),
        "trial_seconds": round(sum(r.seconds for r in trained)),
        "devices": devices,
    }


def verify_record(report: VerifyReport, command: str) -> dict:
    """Everything the verify measured, for programs (`mnist-search frontier` reads it): every
    candidate with its spec, recipe and each seed's test accuracy per epoch; which one was
    exported (the best, its best seed)."""
    return {
        "study": report.study_name,
        "budget": report.budget,
        "device": report.device,
        "wall_seconds": round(report.wall_seconds, 1),
        "command": command,
        # What its runs trained on; `full`: the protocol a claim rests on (older records: absent).
        "protocol": (
            {"text": str(report.protocol), "full": report.protocol.full}
            if report.protocol is not None
            else None
        ),
        "exported": {"trial": report.best.trial, "seed": best_seed(report.best).seed},
        "search": report.search,
        "candidates": [
            {
                "trial": v.trial,
                "params": v.params,
                "spec": v.spec.model_dump(mode="json"),
                "recipe": v.recipe.model_dump(mode="json"),
                "seeds": [
                    {
                        "seed": r.seed,
                        "mlflow_run_id": r.run_id,
                        "test_acc": [e.test_acc for e in r.result.epochs],
                        "min_last3": r.min_last3,
                    }
                    for r in v.runs
                ],
                "mean": v.mean,
                "std": v.std,
            }
            for v in report.results
        ],
    }


# --- seeds side by side (`verify --jobs N`) --------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker process needs before its first run (data are loaded once per worker)."""

    threads: int
    device: str
    data_dir: Path | None
    limit_train: int | None
    tracking_uri: str
    experiment_name: str
    budget: int
    experiment_file: str
    parent_run_id: str


_worker: dict = {}


def _init_worker(setup: WorkerSetup, progress=None) -> None:
    import signal

    from mnist_search.workflows.runtime import configure_threads

    # Ctrl-C reaches the whole process group: only the parent reacts, and it ends the workers
    # with SIGTERM, which ends each running MLflow run FAILED on its way out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _worker["setup"], _worker["progress"] = setup, progress
    try:
        configure_threads(setup.threads)
        device = torch.device(setup.device)
        tracking = TrackingTarget(setup.tracking_uri).open(setup.experiment_name)  # checked by the parent
        data = load_mnist(setup.data_dir, val_size=0, limit_train=setup.limit_train).to(device)
    except Exception as exc:  # noqa: BLE001 -- raised by the first run: a failing initializer is respawned for ever
        _worker["error"] = exc
        return
    _worker.update(device=device, data=data, tracking=tracking)


def _on_sigterm(signum, frame):
    if _worker.get("busy"):
        raise KeyboardInterrupt  # unwinds the running MLflow run (ends FAILED), then exits below
    os._exit(130)  # idle: nothing to close


def _run_pack(task: SeedPack) -> tuple[int, list]:
    if "error" in _worker:
        raise _worker["error"]
    setup: WorkerSetup = _worker["setup"]
    _worker["busy"] = True
    queue = _worker["progress"]
    feed = None if queue is None else PackFeed(task.recipe.epochs, lambda *p: queue.put((task.index, *p)))
    try:
        runs = _train_pack(task, _worker["tracking"], _worker["data"], _worker["device"], setup.budget,
                           setup.experiment_file, setup.parent_run_id, feed)  # fmt: skip
    except KeyboardInterrupt:
        os._exit(130)  # quietly: no traceback from a worker the parent ended
    finally:
        _worker["busy"] = False
    states = [
        (seed, run_id, result, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        for seed, run_id, result, model in runs
    ]
    return task.index, states


def run_in_parallel(
    tasks: list[SeedPack], jobs: int, setup: WorkerSetup, on_progress: Callable | None = None
):
    """Train the packs `tasks` in `jobs` worker processes; yields (task, [(seed, run_id,
    FitResult, state_dict)]) as packs finish. `on_progress(task, epoch, share, test_acc)` follows
    each pack (`PackFeed`, sent by the workers through a queue and called here from a thread).
    On an exception or interrupt in the caller, the workers are ended (SIGTERM) and their running
    MLflow runs end FAILED before this returns."""
    import multiprocessing
    import threading

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    queue = ctx.Queue() if on_progress is not None else None

    def relay() -> None:
        while (message := queue.get()) is not None:
            index, *progress = message
            on_progress(tasks[index], *progress)

    relaying = threading.Thread(target=relay, name="verify-progress", daemon=True) if queue else None
    if relaying is not None:
        relaying.start()
    try:
        with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(setup, queue)) as pool:
            for index, states in pool.imap_unordered(_run_pack, tasks):
                yield tasks[index], states
            pool.close()  # all done: let the workers exit on their own
            pool.join()
    finally:
        if relaying is not None:
            queue.put(None)
            relaying.join(timeout=5)
