"""Process settings: MLflow's environment defaults, where the local store lives, and URLs
written without their secrets.

The environment defaults are applied when this module is imported, and the package's
`__init__` imports it first, so they are in place before any of our modules imports MLflow
(MLflow reads several of them once, on import). A user's own settings win: each is a default only.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

ENV_DEFAULTS = {
    # No internet here, and scripts read our output: no telemetry, no artifact progress bars.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow's INFO lines ("Creating initial MLflow database tables...") are noise on our console.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A tracking server that goes away is reported in seconds, not after minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def apply_env_defaults() -> None:
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # MLflow reads its logging level once, when imported; if it was imported before us (by a
    # script or a test that imports it first), set the level it would have read.
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


apply_env_defaults()


def store_dir() -> Path:
    """The embedded local store: `mlruns/` (or MNIST_SEARCH_STORE), resolved to an absolute path."""
    return Path(os.environ.get("MNIST_SEARCH_STORE") or "mlruns").resolve()


def default_storage_url() -> str:
    """The embedded study storage: Optuna's journal file beside the MLflow database."""
    return str(store_dir() / "optuna-journal.log")


def resolve_tracking_uri(uri: str | None, create: bool = True) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else the local SQLite store under mlruns/."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = store_dir()
    if create:
        store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


# Query-string parameters that carry secrets (libpq's password, sslpassword; tokens of HTTP URLs).
SECRET_QUERY_KEYS = frozenset(
    {"password", "sslpassword", "passwd", "pwd", "secret", "token", "access_token", "api_key"}
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def _mask_one(url: str) -> str:
    from sqlalchemy.engine import make_url  # imported here: settings loads before anything heavy
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url
    secret = {k: "***" for k in parsed.query if k.lower() in SECRET_QUERY_KEYS}
    if secret:
        parsed = parsed.update_query_dict(secret)
    if parsed.password is None and not secret:
        return url  # nothing to hide: keep the text exactly as given
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def mask_url(text: str) -> str:
    """Every URL in `text` with its password hidden: `user:***@`, `:***@` (no user), and secret
    query parameters (`?password=***`). Rendered by SQLAlchemy's URL, which parses both storage
    URLs and tracking URIs; text without a URL is returned unchanged."""

    def masked(match: re.Match) -> str:
        url = match.group(0)
        end = len(url.rstrip(":;,."))  # sentence punctuation after a URL is not part of it
        return _mask_one(url[:end]) + url[end:]

    return _URL.sub(masked, text)
