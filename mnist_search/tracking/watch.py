"""A tracking server watched while trials train: the display says when it stops answering."""

from __future__ import annotations

import math
import time

from mnist_search.core.errors import TrackingError
from mnist_search.core.settings import mask_url
from mnist_search.tracking.client import check_health


class ServerWatch:
    """Whether an HTTP tracking server still answers, asked at most every `every` seconds by a
    display while trials train: when it stops, MLflow's client retries its writes (up to ~35 s,
    `settings`) before the trial fails, and the user should see why nothing moves meanwhile."""

    def __init__(self, uri: str, every: float = 10.0, timeout: float = 5.0):
        self.uri, self.every, self.timeout = uri, every, timeout
        self.http = uri.split("://", 1)[0].lower() in ("http", "https")
        self.asked = -math.inf
        self.down_since: float | None = None

    def warning(self) -> str | None:
        """A line to show while the server does not answer; None while it does (or is no server)."""
        now = time.monotonic()
        if self.http and now - self.asked >= self.every:
            self.asked = now
            try:
                check_health(self.uri, self.timeout)
                self.down_since = None
            except TrackingError:
                self.down_since = self.down_since or now
        if self.down_since is None:
            return None
        return (
            f"tracking server {mask_url(self.uri)} not answering for {now - self.down_since:.0f} s; "
            "MLflow retries each write for up to ~35 s, then the trial fails"
        )
