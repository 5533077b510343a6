"""Progress displays for the CLI: a live rich display on a terminal, plain lines (or nothing) otherwise.

Library code never prints; the CLI hands `EpochProgress.update` to `fit` as its `on_epoch` callback.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .train import EpochResult


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )


class EpochProgress:
    """Epochs done / planned with the current accuracies; silent when not on a terminal."""

    def __init__(self, epochs: int, console: Console, label: str = "train"):
        self.live = console.is_terminal
        self.progress = make_progress(console) if self.live else None
        self.task = None
        self.epochs = epochs
        self.label = label

    def __enter__(self) -> EpochProgress:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.epochs, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, r: EpochResult) -> None:
        if self.progress is not None:
            status = f"val {r.val_acc:.4f}  test {r.test_acc:.4f}  loss {r.train_loss:.4f}"
            self.progress.update(self.task, completed=r.epoch, status=status)
