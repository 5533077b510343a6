"""`mnist-search train`: one fixed spec trained into one MLflow run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import Field

from mnist_search.core.config import DEFAULT_BUDGET, TARGET, ArchSpec, Recipe, check_name, load_spec
from mnist_search.core.data import MNISTData, load_mnist
from mnist_search.core.errors import NonFiniteLoss
from mnist_search.core.model import count_params
from mnist_search.core.results import EpochResult, FitResult, ReplicaResults
from mnist_search.tracking import names
from mnist_search.tracking.client import TRACKING_FAILURES, Tracking, runs_link, tracking_target
from mnist_search.tracking.sink import RunSink
from mnist_search.training.teacher import check_teacher
from mnist_search.training.train import train_seeds
from mnist_search.workflows.outcome import Outcome, fault
from mnist_search.workflows.request import RunRequest
from mnist_search.workflows.runtime import setup_device

DESCRIPTION = (
    "mnist-search train: one run per fixed spec (an experiment file's `spec`), with its per-epoch "
    "metrics, layer and receptive-field tables, and the model (raw [0, 1] pixels in, 10 logits out)."
)


class TrainRequest(RunRequest):
    experiment: str  # a path or a shipped experiment's name, with a `spec` section
    epochs: int | None = Field(None, gt=0)  # None: the recipe's
    seed: int = Field(0, ge=0)
    budget: int = Field(DEFAULT_BUDGET, gt=0)
    experiment_name: str = names.EXPERIMENTS["train"]


@dataclass
class TrainedRun:
    run_id: str
    spec: ArchSpec
    result: FitResult
    device: torch.device
    link: str  # the experiment's runs in MLflow's UI


def run_train(request: TrainRequest, on_epoch: Callable[[EpochResult], None] | None = None) -> TrainedRun:
    """Check everything (exit-2 errors) before anything is written, then train and log one run."""
    exp, spec = load_spec(request.experiment)
    check_name("--experiment-name", request.experiment_name)
    recipe = exp.recipe.model_copy(update={"epochs": request.epochs or exp.recipe.epochs})
    check_teacher(recipe)
    device = setup_device(request.device)
    target = tracking_target(request.tracking_uri)
    data = load_mnist(request.data_dir, val_size=recipe.val_size, limit_train=request.limit_train).to(device)
    tracking = target.open(request.experiment_name, DESCRIPTION)
    ((run_id, result, _),) = train_into_runs(
        tracking, spec, data, recipe, device, seeds=[request.seed], budget=request.budget,
        experiment_file=request.experiment, run_names=[f"{exp.name}-s{request.seed}"], tags={"kind": "train"},
        on_epoch=(lambda epoch: on_epoch(epoch[0])) if on_epoch else None,
    )  # fmt: skip
    return TrainedRun(run_id, spec, result, device, runs_link(tracking))


def train_command(request: TrainRequest, on_epoch: Callable[[EpochResult], None] | None = None) -> Outcome:
    """`mnist-search train`: the run, and the line that says what it reached. A user's mistake
    raises (exit 2, nothing written); a NaN loss or an interrupt is the outcome (its run FAILED)."""
    try:
        run = run_train(request, on_epoch)
    except (NonFiniteLoss, KeyboardInterrupt) as exc:
        return fault(exc, "the MLflow run was marked FAILED")
    last = run.result.epochs[-1]
    return (
        Outcome()
        .say(
            f"run {run.run_id}: {count_params(run.spec):,} params, epoch {last.epoch}: "
            f"val acc {last.val_acc:.4f}, test acc {last.test_acc:.4f}, "
            f"target met: {'yes' if run.result.target_met(TARGET) else 'no'} "
            f"({last.epoch_seconds:.1f} s/epoch on {run.device.type})"
        )
        .say_link(run.link)
    )


def train_into_runs(
    tracking: Tracking,
    spec: ArchSpec,
    data: MNISTData,
    recipe: Recipe,
    device: torch.device,
    *,
    seeds: list[int],
    budget: int,
    experiment_file: str,
    run_names: list[str],
    tags: dict[str, str],
    on_epoch: Callable[[list[EpochResult]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    parent_run_id: str | None = None,
) -> list[tuple[str, FitResult, torch.nn.Module]]:
    """Train `spec` with each seed at once, each seed into a run of its own (`train`, `verify`):
    [(run id, FitResult, model)] per seed. Any exception ends every run FAILED (a NaN loss with
    its reason) and is re-raised. `on_epoch` gets each epoch's per-seed results."""
    parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    command = tags["kind"].split("-")[0]  # train, or verify for its verify-run runs
    sinks: list[RunSink] = []
    result = ReplicaResults.empty(seeds)
    try:
        for seed, name in zip(seeds, run_names):
            sinks.append(RunSink.open(
                tracking, spec, recipe, data, seeds=[seed], command=command, run_name=name, budget=budget,
                experiment_file=experiment_file, tags=tags | parent,
            ))  # fmt: skip

        def logged(epoch: list[EpochResult]) -> None:
            for sink, r in zip(sinks, epoch):
                sink.epoch([r])
            if on_epoch is not None:
                on_epoch(epoch)

        def packed(layout: str) -> None:  # on the runs while they train, as soon as it is chosen
            for sink in sinks:
                sink.packed(layout)

        models = train_seeds(spec, data, recipe, device, result, logged, packed, on_step=on_step)
        for sink, seed, own, model in zip(sinks, seeds, result.results, models):
            sink.close("COMPLETE", ReplicaResults([seed], [own], result.layout), model, data.example())
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, NonFiniteLoss) else ""
        with contextlib.suppress(*TRACKING_FAILURES):  # a server that went away: the caller reports it
            for sink in sinks:
                sink.fail(reason)
        raise
    return [(sink.run_id, own, model) for sink, own, model in zip(sinks, result.results, models)]
