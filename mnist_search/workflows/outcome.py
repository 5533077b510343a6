"""How a command ended, as it tells the user: its lines in order, and its exit code.

Each command's library call returns one (`train_command`, `verify_command`, `study_end`); the CLI
prints the lines and exits with the code. A user's mistake found before anything is written is
not an outcome: it raises one of `core.errors.USAGE_ERRORS` (one line, exit 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mnist_search.core.errors import NonFiniteLoss

# The faults that end a run mid-way: a NaN loss and a lost tracking server (RunFailed) are one
# `error:` line and exit code 1; an interrupt (Ctrl-C, SIGTERM) is one `interrupted:` line and 130.
INTERRUPTED_CODE = 130


@dataclass
class Outcome:
    code: int = 0
    lines: list[tuple[str, str]] = field(default_factory=list)  # ("out" | "err", line)

    def say(self, text: str, stream: str = "out") -> Outcome:
        self.lines.append((stream, text))
        return self

    def say_link(self, link: str) -> Outcome:
        """Where to read the runs in MLflow's UI, when there is a page to link."""
        return self.say(f"MLflow: {link}") if link else self

    def with_code(self, code: int) -> Outcome:
        self.code = code
        return self


def fault(exc: BaseException, interrupted: str) -> Outcome:
    """The outcome of a run stopped mid-way by `exc`; `interrupted` says what became of its runs."""
    if isinstance(exc, KeyboardInterrupt):
        return Outcome(INTERRUPTED_CODE).say(f"interrupted: {interrupted}", "err")
    if isinstance(exc, NonFiniteLoss):
        return Outcome(1).say(f"error: training failed: {exc}", "err")
    return Outcome(1).say(f"error: {exc}", "err")
