"""What every command that trains is asked, built by keyword: the device, the data, the tracking
store, and the command line that asked (recorded with what it makes). `train`, `study` and
`verify` extend it with their own fields."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    data_dir: Path | None = None  # the folder holding MNIST/raw/; None: $MNIST_SEARCH_DATA_DIR, else ./data
    limit_train: int | None = Field(None, gt=0)  # the first N training images only (smoke runs)
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else the local store
    experiment_name: str = ""  # the MLflow experiment; each command's own default (tracking.names)
    command: str = ""  # the command line as given (passwords masked): what made a study or a verify
