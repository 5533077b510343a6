"""The embedded study storage: Optuna's journal file, guarded against torn writes and bad lines.

A crash mid-append (power loss, a full disk, an OOM kill) leaves the file's last line without its
newline. Optuna skips such a line when reading, but its next append starts right after the torn
bytes, fusing two records into one invalid line, and from then on every read of every study in the
file fails. So a writer cuts the partial last line (after a backup copy of the whole file, with one
warning) when it opens the file, and again under the file lock before every append. A reader
leaves the file as it is and reads up to the torn bytes: `report` works on a read-only store.

A complete line that is not a record (an edit, a disk error) ends what can be read: records are
replayed in order, and skipping one would shift every trial id after it. Every study is read as
it was up to that line (`bad_line` says which); a writer refuses to append after it, and
`cut_at_bad_line` keeps the records before it (the file as it was is copied beside it). A file
whose first line is not a record is not a journal at all, and nothing writes to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileSymlinkLock

from mnist_search.core.errors import StorageError

log = logging.getLogger("mnist_search")

# How every record starts (Optuna writes `{"op_code": 0, ...`, we write it without the space).
RECORD_START = re.compile(rb'\A\s*\{\s*"op_code"\s*:')


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


def looks_like_journal(path: Path) -> bool:
    """An empty file, or one whose first bytes open a journal record."""
    with path.open("rb") as f:
        head = f.read(64)
    return not head or RECORD_START.match(head) is not None


def not_a_journal(path: Path) -> StorageError:
    return StorageError(
        f"--storage {path}: not a study storage (its first line is not an Optuna journal record); "
        "give the journal file (mlruns/optuna-journal.log) or a database URL"
    )


def _backup(path: Path, kind: str) -> Path:
    backup = path.with_name(f"{path.name}.{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    shutil.copy2(path, backup)
    return backup


def cut_torn_tail(path: Path) -> Path | None:
    """Cut a partial last record, keeping a copy of the file as it was; returns the copy's path."""
    torn = torn_bytes(path)
    if not torn:
        return None
    backup = _backup(path, "torn")
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


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """A complete line's record, or None and why it is not one."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return None, getattr(exc, "msg", None) or str(exc).splitlines()[0]
    if not isinstance(record, dict) or "op_code" not in record:
        return None, "valid JSON but not a journal record"
    return record, ""


class GuardedJournalFile(BaseJournalBackend):
    """A journal file read up to its first bad line, whose appends always start on a fresh line.

    `writable=False`: the file is only read (never created, locked, cut or appended to)."""

    def __init__(self, path: str | Path, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable
        self.bad_line: tuple[int, str] | None = None  # (line number from 1, why it is not a record)
        self.torn = 0  # bytes after the last newline when read (a reader leaves them)
        self._offsets: dict[int, int] = {0: 0}  # record number -> byte offset of its line
        if self.path.is_dir():
            raise StorageError(
                f"--storage {self.path}: a folder; give the journal file in it (optuna-journal.log)"
            )
        if not writable and not self.path.is_file():
            raise StorageError(f"--storage {self.path}: no study storage there (the file does not exist)")
        if not self.path.exists():
            self.path.open("ab").close()
        if not looks_like_journal(self.path):
            raise not_a_journal(self.path)
        self.lock = JournalFileSymlinkLock(str(self.path))  # Optuna's default lock for the file
        if writable:
            self._under_lock(lambda: cut_torn_tail(self.path))

    def _under_lock(self, work):
        self.lock.acquire()
        try:
            return work()
        finally:
            self.lock.release()

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as f:
            # Only what was in the file when the read began (another process may be appending).
            remaining = os.fstat(f.fileno()).st_size
            number = 0
            if log_number_from in self._offsets:
                number = log_number_from
                f.seek(self._offsets[number])
                remaining -= self._offsets[number]
            for line in f:
                remaining -= len(line)
                if remaining < 0:
                    break
                if not line.endswith(b"\n"):  # a torn tail: every complete record before it counts
                    self.torn = len(line)
                    break
                record, why = _parse(line)
                if record is None:
                    self.bad_line = (number + 1, why)
                    break
                self._offsets[number + 1] = self._offsets[number] + len(line)
                number += 1
                if number > log_number_from:
                    yield record

    def bad_line_error(self) -> StorageError:
        line, why = self.bad_line
        return StorageError(
            f"{self.path} line {line} is not a journal record ({why}): every study reads as it was "
            f"up to line {line - 1} (mnist-search report); to go on from there, keep those lines "
            f"(the file as it is is copied beside it): mnist-search repair --storage {self.path}"
        )

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not self.writable:
            raise StorageError(f"{self.path}: opened read-only")
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode()

        def append() -> None:
            cut_torn_tail(self.path)  # a writer that died mid-append while we were running
            if self.bad_line is not None:  # appended after a bad line, a record could never be read
                raise self.bad_line_error()
            with self.path.open("ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        self._under_lock(append)


def cut_at_bad_line(path: Path) -> tuple[int, Path] | None:
    """Keep the records before the file's first bad line (a copy of the file as it was goes beside
    it); returns (records kept, the copy), or None when every line is a record."""
    if not path.is_file():
        raise StorageError(f"--storage {path}: no study storage there (the file does not exist)")
    journal = GuardedJournalFile(path)  # cuts a torn tail first
    kept = sum(1 for _ in journal.read_logs(0))
    if journal.bad_line is None:
        return None

    def cut() -> Path:
        backup = _backup(path, "bad")
        with path.open("r+b") as f:
            f.truncate(journal._offsets[kept])
        return backup

    return kept, journal._under_lock(cut)
