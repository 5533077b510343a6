"""The embedded study storage: Optuna's journal file, guarded against torn writes.

A crash mid-append (power loss, a full disk, an OOM kill) leaves the file's last line without its
newline. Optuna skips such a line when reading, but its next append starts right after the torn
bytes, fusing two records into one invalid line, and from then on every read of every study in the
file fails. So the partial last line is cut (after a backup copy of the whole file, with one
warning) when the file is opened, and again under the file lock before every append.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

log = logging.getLogger("mnist_search")


def torn_bytes(path: Path) -> int:
    """How many bytes follow the file's last newline (0 for an intact or empty file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        tail, end = b"", size
        while end > 0:  # backwards in blocks: a record is a few hundred bytes
            start = max(0, end - 4096)
            f.seek(start)
            tail = f.read(end - start) + tail
            newline = tail.rfind(b"\n")
            if newline >= 0:
                return len(tail) - newline - 1
            end = start
    return size  # no newline at all: the first record itself is torn


def cut_torn_tail(path: Path) -> Path | None:
    """Cut a partial last record, keeping a copy of the file as it was; returns the copy's path."""
    torn = torn_bytes(path)
    if not torn:
        return None
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    shutil.copy2(path, backup)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - torn)
    log.warning(
        "%s: cut a partial last record (%d bytes, left by a writer that died mid-write); "
        "every complete record is kept; the file as it was: %s",
        path,
        torn,
        backup,
    )
    return backup


class GuardedJournalFile(JournalFileBackend):
    """Optuna's journal file backend whose appends always start on a fresh line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = JournalFileSymlinkLock(str(self.path))  # Optuna's default lock for the file
        super().__init__(str(self.path), lock_obj=self.lock)
        self._under_lock(lambda: cut_torn_tail(self.path))

    def _under_lock(self, work):
        self.lock.acquire()
        try:
            return work()
        finally:
            self.lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode()

        def append() -> None:
            cut_torn_tail(self.path)  # a writer that died mid-append while we were running
            with self.path.open("ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        self._under_lock(append)
