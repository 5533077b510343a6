"""Room on the disk for the local store: checked before a store is created or a trial starts.

A disk that fills mid-write leaves an SQLite database half-built ("table spans already exists" on
every later run) or a journal record torn; refusing to start with too little room keeps a full
disk from reaching either. What a trial writes to the local store is small (its metrics, a few
tables, its checkpoint and MLflow model: under 2 MB for an 8,000-parameter net); the margin is ten
times that, so a check that passes leaves room for the writes that follow it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mnist_search.core.errors import NoSpace

MB = 2**20
# Free space a store's folder must have before a store is created there or a trial starts
# (MNIST_SEARCH_MIN_FREE_MB overrides: a machine with its store on a small disk, the tests).
NEEDED_BYTES = int(float(os.environ.get("MNIST_SEARCH_MIN_FREE_MB", "20")) * MB)


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_space(folder: Path, what: str, needed: int | None = None) -> None:
    """NoSpace (one line, exit 2) when the disk holding `folder` has less than `needed` free
    (default NEEDED_BYTES)."""
    needed = NEEDED_BYTES if needed is None else needed
    free = free_bytes(folder)
    if free < needed:
        raise NoSpace(
            f"{folder}: {free / MB:.1f} MB free on its disk, and {what} needs at least {needed / MB:.0f} MB; "
            "free some space, or put the store on another disk (MNIST_SEARCH_STORE)"
        )
