"""Export a trained trial: a torch.export program over raw [0, 1] pixels, plus its weights and spec."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import torch
from torch import nn

from mnist_search.core.config import ArchSpec, Recipe, experiment_to_yaml, spec_to_yaml
from mnist_search.core.data import MEAN, STD
from mnist_search.core.errors import ExportError
from mnist_search.core.model import WithNormalisation, layer_table, receptive_field_table
from mnist_search.search.leaderboard import TrialRow, completed, leaderboard
from mnist_search.search.records import TrialRecord
from mnist_search.tracking import names
from mnist_search.tracking.client import Tracking
from mnist_search.tracking.history import checkpoint_model

FILES = ["model.pt2", "state_dict.pt", "spec.yaml", "layers.txt", "receptive_field.txt"]


def export_model(model: nn.Module, out_dir: Path) -> list[str]:
    """model.pt2 (raw [0, 1] pixels -> logits, dynamic batch), state_dict.pt, spec.yaml, tables."""
    spec: ArchSpec = model.spec
    model = model.to("cpu").eval()
    wrapped = WithNormalisation(model, MEAN, STD).eval()
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


def export_trial(study, trial: str, out_dir: Path, tracking: Tracking) -> tuple[TrialRow, list[str]]:
    """Export a completed trial of `study` ('best' by validation, or a trial number) from the
    checkpoint its MLflow run holds; ExportError when there is none."""
    rows = {r.trial: r for r in completed(leaderboard(study))}
    if trial == "best":
        if not rows:
            raise ExportError(f"study {study.study_name}: no completed trial to export")
        row = min(rows.values(), key=lambda r: r.rank)
    elif trial.isdigit() and int(trial) in rows:
        row = rows[int(trial)]
    else:
        raise ExportError(f"--trial {trial}: not a completed trial of study {study.study_name}")
    if not row.mlflow_run_id:
        raise ExportError(f"trial {row.trial}: no MLflow run recorded for it")
    try:
        model = checkpoint_model(tracking.client, row.mlflow_run_id, ArchSpec.model_validate(row.spec))
    except mlflow.exceptions.MlflowException as exc:
        raise ExportError(
            f"trial {row.trial}: checkpoint of run {row.mlflow_run_id} not found ({exc.error_code})"
        ) from None
    written = export_model(model, out_dir)
    recipe = TrialRecord.of(study.trials[row.trial]).recipe
    if recipe is not None:  # how it trained, val_size included: what makes the folder a teacher
        text = experiment_to_yaml(
            model.spec, Recipe.model_validate(recipe), f"study {study.study_name}, trial {row.trial}"
        )
        (out_dir / "experiment.yaml").write_text(text)
        written = [*written, "experiment.yaml"]
    return row, written


def check_out_dir(out_dir: Path, option: str = "--out") -> None:
    """A folder we may write into: absent (created) or a folder, never an existing file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{option} {out_dir}: exists and is not a folder")


def export_from_study(
    study_name: str | None, storage: str | None, trial: str, out_dir: Path, tracking_uri: str | None
) -> tuple[TrialRow, list[str]]:
    """`mnist-search export`: every check first, then the study's trial exported from MLflow."""
    from mnist_search.search.studies import load_study
    from mnist_search.tracking.client import open_session

    if trial != "best" and not trial.isdigit():
        raise ExportError(f"--trial {trial}: not a number; give a trial number or 'best'")
    check_out_dir(out_dir)
    study = load_study(study_name, storage)
    return export_trial(study, trial, out_dir, open_session(tracking_uri, names.EXPERIMENTS["study"]))
