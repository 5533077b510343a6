"""Environment defaults for MLflow, set before it is imported (the CLI imports this first).

A user's own settings win: each is a default only."""

import os

# No internet here, and scripts read our output: no telemetry, no artifact progress bars.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's INFO lines ("Creating initial MLflow database tables...") are noise on our console.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# A tracking server that goes away is reported in seconds, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
