"""Export a trained trial: a torch.export program over raw [0, 1] pixels, plus its weights and spec."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mlflow
import torch
from torch import nn

from .config import ArchSpec, spec_to_yaml
from .data import MEAN, STD
from .model import build_model, layer_table, receptive_field_table


class ExportError(Exception):
    """The trial's checkpoint cannot be found or read."""


class WithNormalisation(nn.Module):
    """Raw pixels in [0, 1], shape (N, 1, 28, 28) -> 10 logits; MNIST normalisation inside."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


FILES = ["model.pt2", "state_dict.pt", "spec.yaml", "layers.txt", "receptive_field.txt"]


def export_model(model: nn.Module, out_dir: Path) -> list[str]:
    """model.pt2 (raw [0, 1] pixels -> logits, dynamic batch), state_dict.pt, spec.yaml, tables."""
    spec: ArchSpec = model.spec
    model = model.to("cpu").eval()
    wrapped = WithNormalisation(model).eval()
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(wrapped, (torch.rand(2, 1, 28, 28),), dynamic_shapes={"x": {0: batch}})
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # "No complete tensor found": about CUDA weights, not ours
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(program, out_dir / "model.pt2")
    torch.save(model.state_dict(), out_dir / "state_dict.pt")
    (out_dir / "spec.yaml").write_text(spec_to_yaml(spec))
    (out_dir / "layers.txt").write_text(layer_table(spec) + "\n")
    (out_dir / "receptive_field.txt").write_text(receptive_field_table(spec) + "\n")
    return FILES


def export_trial(row: dict, out_dir: Path) -> list[str]:
    run_id = row.get("mlflow_run_id")
    if not run_id:
        raise ExportError(f"trial {row['trial']}: no MLflow run recorded for it")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoint", dst_path=tmp
            )
        except mlflow.exceptions.MlflowException as exc:
            raise ExportError(
                f"trial {row['trial']}: checkpoint of run {run_id} not found ({exc.error_code})"
            ) from None
        spec = ArchSpec.model_validate(row["spec"])
        model = build_model(spec)
        model.load_state_dict(torch.load(Path(local) / "state_dict.pt", weights_only=True))
    return export_model(model, out_dir)
