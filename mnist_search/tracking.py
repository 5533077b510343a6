"""MLflow: where runs go, what a training run logs, and how names and secrets are written.

The embedded default is a local store under `mlruns/` (override with MNIST_SEARCH_STORE): a SQLite
database `mlruns/mlflow.db` plus artifacts under `mlruns/artifacts/` (MLflow 3 rejects a plain
file store). `--tracking-uri` or MLFLOW_TRACKING_URI points at a tracking server instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from .config import ArchSpec, Recipe
from .model import count_params, layer_table, mult_adds, receptive_field_table
from .train import EpochResult, FitResult

TARGET = 0.994  # the task: >= 99.4 % test accuracy ...
DEFAULT_BUDGET = 8_000  # ... with fewer than this many parameters


class TrackingError(Exception):
    """The tracking server cannot be reached or refused us; one line for the user."""


def store_dir() -> Path:
    return Path(os.environ.get("MNIST_SEARCH_STORE") or "mlruns").resolve()


def resolve_tracking_uri(uri: str | None) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else the local SQLite store under mlruns/."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def mask_url(url: str) -> str:
    """Hide the password in scheme://user:password@host URLs (storage and tracking URIs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of retries) when an HTTP tracking server is unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {mask_url(uri)} answered HTTP {resp.status}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking server {mask_url(uri)} is unreachable ({reason})") from None


def setup(tracking_uri: str | None, experiment_name: str) -> str:
    """Point MLflow at the store and select (creating if needed) the experiment; returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        artifacts = None
        if uri.startswith("sqlite:"):  # local store: keep artifacts beside the database
            artifacts = (store_dir() / "artifacts").as_uri()
        exp_id = client.create_experiment(experiment_name, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def spec_params(spec: ArchSpec, recipe: Recipe) -> dict[str, str]:
    """Flat MLflow params: spec.* and recipe.* (nested lists written as their JSON form)."""
    params = {f"spec.{k}": v for k, v in spec.model_dump(mode="json").items()}
    params.update({f"recipe.{k}": v for k, v in recipe.model_dump(mode="json").items()})
    return {k: str(v) for k, v in params.items()}


def run_tags(spec: ArchSpec, budget: int, experiment_file: str | None) -> dict[str, str]:
    return {
        "params": str(count_params(spec)),
        "mult_adds": str(mult_adds(spec)),
        "budget": str(budget),
        "under_budget": str(count_params(spec) < budget).lower(),
        "target": str(TARGET),
        "experiment_file": experiment_file or "",
        "git_commit": git_commit(),
    }


def log_epoch(result: EpochResult) -> None:
    mlflow.log_metrics(result.metrics(), step=result.epoch)


def log_tables(spec: ArchSpec) -> None:
    mlflow.log_text(layer_table(spec), "summary/layers.txt")
    mlflow.log_text(receptive_field_table(spec), "summary/receptive_field.txt")


def log_outcome(fit: FitResult) -> None:
    """Final figures and the target_met tag (test acc >= 99.4 % in each of the last 3 epochs)."""
    if not fit.epochs:
        return
    mlflow.log_metrics(
        {
            "final/val_acc_last3": fit.val_score,
            "final/test_acc_min_last3": fit.test_min_last3,
            "final/test_acc": fit.epochs[-1].test_acc,
        }
    )
    mlflow.set_tag("target_met", str(fit.target_met(TARGET)).lower())


def log_model(model: torch.nn.Module) -> None:
    """The trained network with a signature: (N, 1, 28, 28) normalised float32 -> (N, 10) logits."""
    model = model.to("cpu").eval()
    example = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():
        out = model(example).numpy()
    signature = infer_signature(example.numpy().astype(np.float32), out)
    with warnings.catch_warnings():  # torch.export's "No complete tensor found" is about CUDA
        warnings.simplefilter("ignore", UserWarning)
        _log_pytorch_model(model, signature, example)


def _log_pytorch_model(model, signature, example) -> None:
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.numpy(),  # MLflow 3's default pt2 format traces with it
        # Naming the requirement skips MLflow's import-scanning subprocess (seconds per model).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
