"""`mnist-search repair`: a study journal cut at its first line that is not a record."""

from __future__ import annotations

from pathlib import Path

from mnist_search.core.errors import StorageError
from mnist_search.core.settings import default_storage_url, mask_url
from mnist_search.search.journal import cut_at_bad_line
from mnist_search.workflows.outcome import Outcome


def repair_journal(storage: str | None) -> Outcome:
    """Keep the journal's records before its first bad line (a copy of the file beside it); one
    line either way. StorageError for a database URL, a missing file or a file that is not a journal."""
    path = storage or default_storage_url()
    if "://" in path:
        raise StorageError(
            f"--storage {mask_url(path)}: repair mends a journal file; a database keeps its own consistency"
        )
    cut = cut_at_bad_line(Path(path))
    if cut is None:
        return Outcome().say(f"{path}: every line is a journal record; nothing to repair")
    kept, backup = cut
    return Outcome().say(
        f"{path}: kept its first {kept:,} records (every study as it was up to there); the file as it was: {backup}"
    )
