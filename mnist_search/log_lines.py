"""Log records as the one-line warnings a command prints: the library's own warnings, and the
HTTP retries of a tracking server that does not answer. Light: the CLI installs them before it
knows which command runs."""

from __future__ import annotations

import logging
import os
import re
import time

from rich.console import Console


class WarningLines(logging.Handler):
    """The library's warnings (logger "mnist_search"), one `warning: ...` line each."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"warning: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)


class RetryLines(logging.Handler):
    """urllib3's retries of a tracking server that does not answer, as one `warning:` line per
    episode (not one per retry, not a silent wait): MLflow retries a request a few times
    (core.settings: 2 retries, 10 s each at most) before the command reports the server lost."""

    QUIET_SECONDS = 60.0  # one line per minute of a server that stays away

    def __init__(self, console: Console):
        super().__init__()
        self.console, self.last = console, -self.QUIET_SECONDS

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if not text.startswith("Retrying") or time.monotonic() - self.last < self.QUIET_SECONDS:
            return
        self.last = time.monotonic()
        # urllib3 logs ("Retrying (%r) after connection broken by '%r': %s", retry, error, url).
        error = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else None
        conn = getattr(error, "conn", None) or getattr(error, "pool", None)
        host, port = getattr(conn, "host", None), getattr(conn, "port", None)
        server = f"{host}:{port}" if host and port else "the tracking server"
        reason = re.search(r"(Connection refused|timed out|Name or service not known|Connection reset|"
                           r"Remote end closed connection|Connection aborted)", text)  # fmt: skip
        self.console.print(
            f"warning: {server} is not answering ({reason.group(1) if reason else 'no response'}); "
            f"retrying for up to ~{self.patience():.0f} s before the command reports it lost",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip

    @staticmethod
    def patience() -> float:
        """The longest MLflow's retries of one request can take: every try timing out, with the
        exponential backoff (and its up-to-1 s jitter) between them."""
        env = os.environ
        retries = int(env.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"))
        factor = float(env.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"))
        timeout = float(env.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))
        return (retries + 1) * timeout + sum(factor * 2**i + 1 for i in range(retries))
