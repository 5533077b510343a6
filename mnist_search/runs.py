"""`mnist-search train`: one fixed spec trained into one MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import DEFAULT_BUDGET, ArchSpec, check_name, load_spec
from .data import load_mnist
from .runtime import setup_device
from .settings import resolve_tracking_uri
from .teacher import check_teacher
from .tracking import check_tracking, connect, runs_link, tracked_fit
from .train import EpochResult, FitResult

EXPERIMENT_NAME = "mnist-search-train"
DESCRIPTION = (
    "mnist-search train: one run per fixed spec (an experiment file's `spec`), with its per-epoch "
    "metrics, layer and receptive-field tables, and the model (raw [0, 1] pixels in, 10 logits out)."
)


@dataclass(frozen=True)
class TrainRequest:
    experiment: str  # a path or a shipped experiment's name, with a `spec` section
    epochs: int | None = None  # None: the recipe's
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    limit_train: int | None = None
    tracking_uri: str | None = None
    experiment_name: str = EXPERIMENT_NAME
    budget: int = DEFAULT_BUDGET


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
    check_tracking(resolve_tracking_uri(request.tracking_uri, create=False))
    data = load_mnist(request.data_dir, val_size=recipe.val_size, limit_train=request.limit_train).to(device)
    tracking = connect(request.tracking_uri, request.experiment_name, DESCRIPTION)
    run_id, result, _ = tracked_fit(
        tracking, spec, data, recipe, device, seed=request.seed, budget=request.budget,
        experiment_file=request.experiment, run_name=f"{exp.name}-s{request.seed}", tags={"kind": "train"},
        on_epoch=on_epoch,
    )  # fmt: skip
    return TrainedRun(run_id, spec, result, device, runs_link(tracking))
