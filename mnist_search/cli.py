"""Typer commands: thin wrappers that parse, call the library, and print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from . import tracking
from .config import ArchSpec, ConfigError, Experiment, load_experiment
from .data import DataError, load_mnist
from .model import build_model, count_params, layer_table, mult_adds, receptive_field_table
from .progress import EpochProgress
from .train import NonFiniteLoss, configure_threads, fit, resolve_device

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
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    configure_threads()
    try:
        tracking.setup(tracking_uri, experiment_name)
    except tracking.TrackingError as exc:
        fail(str(exc))
    try:
        data = load_mnist(data_dir, val_size=recipe.val_size, limit_train=limit_train).to(dev)
    except DataError as exc:
        fail(str(exc))

    import mlflow

    model = build_model(spec, seed=seed)
    with mlflow.start_run(run_name=f"{exp.name}-s{seed}") as run:
        mlflow.log_params(tracking.spec_params(spec, recipe) | {"seed": str(seed), "epochs": str(epochs)})
        mlflow.set_tags(tracking.run_tags(spec, budget, str(path)) | {"kind": "train"})
        tracking.log_tables(spec)

        with EpochProgress(epochs, out, label=exp.name or "train") as progress:

            def on_epoch(r):
                tracking.log_epoch(r)
                progress.update(r)

            try:
                result = fit(model, data, recipe, dev, on_epoch, epochs=epochs, seed=seed)
            except NonFiniteLoss as exc:
                mlflow.set_tag("failure", str(exc))
                mlflow.end_run("FAILED")
                fail(f"training failed: {exc}", code=1)
        tracking.log_outcome(result)
        tracking.log_model(model)
    last = result.epochs[-1]
    out.print(
        f"run {run.info.run_id}: {count_params(spec):,} params, epoch {last.epoch}: "
        f"val acc {last.val_acc:.4f}, test acc {last.test_acc:.4f}, "
        f"target met: {'yes' if result.target_met(tracking.TARGET) else 'no'} "
        f"({last.epoch_seconds:.1f} s/epoch on {dev.type})",
        highlight=False,
    )


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
