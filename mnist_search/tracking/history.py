"""Reading finished runs back: a run's epochs (`FitResult`) from its metric histories, its network
from its checkpoint, and the finished seed runs a resumed `verify` need not train again."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import mlflow
import torch

from mnist_search.core.config import ArchSpec
from mnist_search.core.model import build_model
from mnist_search.core.results import EpochResult, FitResult
from mnist_search.tracking import names


def fit_result(client: mlflow.MlflowClient, run_id: str) -> FitResult:
    """A run's epochs as logged (`names.EPOCH_METRICS`, step = epoch); NaN where one was not
    logged (no validation split)."""
    history = {
        field: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for field, name in names.EPOCH_METRICS.items()
    }
    epochs = sorted(history["test_acc"])
    return FitResult(
        [
            EpochResult(epoch, **{field: values.get(epoch, math.nan) for field, values in history.items()})
            for epoch in epochs
        ]
    )


def checkpoint_model(client: mlflow.MlflowClient, run_id: str, spec: ArchSpec) -> torch.nn.Module:
    """The network a run's checkpoint holds (`RunLog.checkpoint`)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "checkpoint", tmp)
        model = build_model(spec)
        model.load_state_dict(torch.load(Path(local) / "state_dict.pt", weights_only=True))
    return model.eval()


def finished_seed_runs(
    client: mlflow.MlflowClient, experiment_id: str, tags: dict[str, str]
) -> dict[int, str]:
    """{seed: run id} of the FINISHED one-seed runs carrying every one of `tags` (the newest per
    seed): what an interrupted verify already trained."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id], f"{where} and attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"]
    )
    return {int(run.data.params["seed"]): run.info.run_id for run in runs if "seed" in run.data.params}
