"""Waiting for a service that is still starting: a worker started beside its tracking server and
database (a compose stack, a restarted container) retries for a while instead of dying at once.

An error says whether waiting can help (`transient`): a refused connection or an HTTP 503 can; a
wrong scheme or a 403 cannot, and is raised at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("mnist_search")
T = TypeVar("T")
PAUSE_SECONDS = 2.0


class ServiceError(Exception):
    """A service check failed; `transient` when the service may yet come up."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def patiently(attempt: Callable[[], T], wait: float, pause: float = PAUSE_SECONDS) -> T:
    """`attempt()`, retried every `pause` seconds for up to `wait` seconds while it raises a
    transient ServiceError; the first such error is logged once, the last one raised."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return attempt()
        except ServiceError as exc:
            if not exc.transient or time.monotonic() + pause > deadline:
                raise
            if not told:
                log.warning("%s; waiting up to %.0f s for it to come up", exc, wait)
                told = True
            time.sleep(pause)
