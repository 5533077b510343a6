"""Where Optuna studies live: a journal file under mlruns/ by default, or an RDB (PostgreSQL).

SQLite is unsafe for parallel writers, so the embedded default is Optuna's journal file storage
(`mlruns/optuna-journal.log`), which several local processes may share. PostgreSQL URLs get
heartbeats so that a killed worker's trial becomes FAIL and is retried by a live one.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from .tracking import mask_url, store_dir

HEARTBEAT_SECONDS = 10  # a RUNNING trial without a heartbeat for GRACE_SECONDS is declared FAIL
GRACE_SECONDS = 30


class StorageError(Exception):
    """The storage URL cannot be parsed or the database cannot be reached; one line."""


def default_storage_url() -> str:
    return str(store_dir() / "optuna-journal.log")


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """A journal file path (default), or sqlite:// / postgresql:// (RDB, with heartbeats)."""
    url = url or default_storage_url()
    if "://" not in url:
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"--storage {url}: cannot open journal file ({exc.strerror})") from None
    scheme = url.split("://", 1)[0]
    if not scheme.startswith(("postgresql", "sqlite", "mysql")):
        raise StorageError(f"--storage {mask_url(url)}: unsupported scheme '{scheme}' (use a file path, sqlite:// or postgresql://)")
    if scheme == "postgresql":
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 is what we install
    kwargs = {}
    if not scheme.startswith("sqlite"):
        kwargs = dict(
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            engine_kwargs={"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True},
        )
    try:
        return RDBStorage(url=url, **kwargs)
    except Exception as exc:  # sqlalchemy raises many kinds; the user needs one line
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"--storage {mask_url(url)}: cannot open ({reason})") from None
