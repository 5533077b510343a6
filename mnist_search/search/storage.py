"""Where Optuna studies live: a journal file under mlruns/ by default, or an RDB (PostgreSQL).

SQLite is unsafe for parallel writers, so the embedded default is Optuna's journal file storage
(`mlruns/optuna-journal.log`), which several local processes may share, guarded against torn
writes (`journal`). PostgreSQL URLs get
heartbeats so that a killed worker's trial becomes FAIL and is retried by a live one. No MLflow
here: what else must happen to a dead worker's trial (its run closed) is the caller's `on_stale`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from mnist_search.core.errors import StorageError
from mnist_search.core.settings import default_storage_url, mask_url
from mnist_search.core.waiting import patiently
from mnist_search.search.journal import GuardedJournalFile

# A RUNNING trial whose worker sent no heartbeat for GRACE seconds is declared FAIL and retried.
# Overridable by environment (the tests shorten them to see a killed worker sooner).
HEARTBEAT_SECONDS = int(os.environ.get("MNIST_SEARCH_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("MNIST_SEARCH_GRACE_SECONDS", "30"))

log = logging.getLogger("mnist_search")


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """A dead worker's trial: re-queued for a live worker (Optuna), then `on_stale(trial)`."""

    def __init__(self, on_stale: Callable[[optuna.trial.FrozenTrial], None] | None, max_retry: int):
        super().__init__(max_retry=max_retry)
        self.on_stale = on_stale

    def __call__(self, study, trial) -> None:
        super().__call__(study, trial)
        if self.on_stale is not None:
            self.on_stale(trial)


def open_storage(
    url: str | None,
    on_stale: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    writable: bool = True,
    wait: float = 0.0,
) -> optuna.storages.BaseStorage:
    """A journal file path (default), or sqlite:// / postgresql:// (RDB, with heartbeats).

    `on_stale(trial)` runs for each trial whose worker stopped sending heartbeats, after Optuna
    has marked it FAIL and queued its parameters again. `writable=False` (reading existing
    studies): a journal file that does not exist is an error, not a new empty file, and the file
    is never modified (a torn tail or a bad line is read around, with a warning). `wait`:
    seconds to keep trying a database server that cannot be reached yet (still starting)."""
    url = url or default_storage_url()
    if "://" not in url:
        return _open_journal(Path(url), writable)
    scheme = url.split("://", 1)[0]
    if not scheme.startswith(("postgresql", "sqlite", "mysql")):
        raise StorageError(
            f"--storage {mask_url(url)}: unsupported scheme '{scheme}' (use a file path, sqlite:// or postgresql://)"
        )
    if scheme == "postgresql":
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 is what we install
    kwargs = {}
    if not scheme.startswith("sqlite"):
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {
                "heartbeat_interval": HEARTBEAT_SECONDS,
                "grace_period": GRACE_SECONDS,
                "heartbeat_stale_trial_callback": RetryStale(on_stale, max_retry=3),
                "engine_kwargs": {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True},
            }
    return patiently(lambda: _open_rdb(url, kwargs), wait)


def _open_journal(path: Path, writable: bool) -> JournalStorage:
    try:
        if writable:
            path.parent.mkdir(parents=True, exist_ok=True)
        journal = GuardedJournalFile(path, writable=writable)
        storage = JournalStorage(journal)
    except OSError as exc:
        raise StorageError(f"--storage {path}: cannot open journal file ({exc.strerror})") from None
    if journal.bad_line is not None:
        if writable:
            raise journal.bad_line_error()
        line, why = journal.bad_line
        log.warning(
            "%s line %d is not a journal record (%s): read up to line %d, the rest is left as it is "
            "(mnist-search repair --storage %s keeps the lines before it)", path, line, why, line - 1, path
        )  # fmt: skip
    elif journal.torn:
        log.warning(
            "%s: a partial last record (%d bytes, left by a writer that died mid-write) was not read; "
            "the next command that writes cuts it, keeping a copy", path, journal.torn
        )  # fmt: skip
    return storage


def _open_rdb(url: str, kwargs: dict) -> RDBStorage:
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url=url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises many kinds; the user needs one line
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            # Workers starting together on a new database race to create its tables: retry.
            racing = "already exists" in reason or "duplicate key" in reason
            if not racing or attempt == 3:
                raise StorageError(
                    f"--storage {mask_url(url)}: cannot open ({mask_url(reason)})",
                    transient=_unreachable(exc),
                ) from None
            attempt += 1
            time.sleep(attempt)


def _unreachable(exc: Exception) -> bool:
    """A server that cannot be reached (yet): refused, no such host, timed out — not a wrong
    password or a missing database, which waiting does not mend."""
    import sqlalchemy.exc

    if not isinstance(exc, sqlalchemy.exc.OperationalError):
        return False
    reason = str(exc.orig or exc).lower()
    return not any(s in reason for s in ("authentication", "does not exist", "permission denied"))
