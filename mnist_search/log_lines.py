"""Log records as the one-line warnings a command prints. Light: the CLI installs it before it
knows which command runs."""

from __future__ import annotations

import logging

from rich.console import Console


class WarningLines(logging.Handler):
    """The library's warnings (logger "mnist_search"), one `warning: ...` line each."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"warning: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)
