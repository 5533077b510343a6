"""What the CLI shows: progress (a live rich display on a terminal, plain lines or nothing
otherwise), the study leaderboard and its summary line.

Library code never prints; the CLI hands `EpochProgress.update` to `fit` as its `on_epoch` callback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mnist_search.core.config import TARGET
from mnist_search.core.results import EpochResult
from mnist_search.search.board import Board, TrialProgress
from mnist_search.search.leaderboard import TrialRow


def make_progress(console: Console, eta: bool = False) -> Progress:
    """`eta`: our own ETA column (`task.fields["eta"]`) instead of rich's, whose estimate averages
    a window shorter than one trial and so never shows one in a study."""
    remaining = TextColumn("{task.fields[eta]}") if eta else TimeRemainingColumn()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        remaining,
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

    def __enter__(self) -> Self:
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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _stage(p: TrialProgress | None) -> str:
    if p is None:
        return "starting"
    if p.stage == 2:
        return f"+{p.seeds} seeds"
    return f"{p.seeds} seed{'s' if p.seeds > 1 else ''}"


def best_line(best: TrialRow | None) -> str:
    """The study's best: trial, params, validation score (its seeds), gap to the target, test."""
    if best is None or best.val_acc is None:
        return "best -"
    gap = (best.val_acc - TARGET) * 100
    seeds = f"{best.seeds} seed{'s' if best.seeds > 1 else ''}"
    test = f" test min3 {best.test_acc_min_last3:.4f}" if best.test_acc_min_last3 is not None else ""
    return f"best #{best.trial} {best.params:,}p val {best.val_acc:.4f} ({seeds}, {gap:+.2f} pts to {TARGET:.1%}){test}"


def counts_line(board: Board) -> str:
    return f"done {board.tally.done}/{board.total}: {board.tally.words()}"


class StudyDisplay:
    """A study as it runs, read from its storage every `every` seconds (`search.board.Board`):
    so the trials of `--jobs` workers, of other machines and of this process all show alike.

    On a terminal, a live display: a line per training trial (number, params, seeds, epoch k/N,
    a bar of the epochs, its latest validation score), then the study's counts, its best so far
    with the gap to the target, the time since this run started and an ETA. Not on a terminal, a
    plain line per trial that ends; with `quiet` (a `--jobs` worker), nothing."""

    def __init__(
        self,
        console: Console,
        read: Callable[[], Board],
        quiet: bool = False,
        every: float = 1.0,
        timeout: float | None = None,
        watch: Callable[[], str | None] | None = None,
    ):
        self.console, self.read, self.every, self.timeout = console, read, every, timeout
        self.watch = watch  # a warning to show while something the trials need is down
        self.warned = False
        self.live = console.is_terminal and not quiet
        self.plain = not console.is_terminal and not quiet
        self.started = time.monotonic()
        self.shown: set[int] = set()  # trials whose end is shown (or ended before this run)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    @classmethod
    def for_session(cls, console: Console, session, quiet: bool = False) -> StudyDisplay:
        """The display of a prepared study (`workflows.study.prepare_study`)."""
        from mnist_search.tracking.watch import ServerWatch

        study, total = session.study, session.request.trials
        watch = ServerWatch(session.tracking.uri).warning
        return cls(
            console,
            lambda: Board.read(study, total),
            quiet=quiet,
            timeout=session.request.timeout,
            watch=watch,
        )

    def __enter__(self) -> Self:
        if not (self.live or self.plain):
            return self
        board = self.read()
        self.shown = {row.trial for row in board.ended}
        if self.live:
            from rich.live import Live

            self._live = Live(self.render(board), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        self._thread = threading.Thread(target=self._poll, name="study-display", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.show(self.read())  # the last trials' ends, and the final counts
        finally:
            if self._live is not None:
                self._live.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.show(self.read())
            except Exception:  # noqa: BLE001, S112 -- a display never stops a study; the next read retries
                continue

    def show(self, board: Board) -> None:
        warning = self.watch() if self.watch is not None else None
        if self._live is not None:
            self._live.update(self.render(board, warning))
        if self.plain and bool(warning) != self.warned:  # a plain line when it starts, not every second
            self.console.print(f"warning: {warning}" if warning else "tracking server answers again",
                               markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        self.warned = bool(warning)
        if self.plain:
            for row in board.ended:
                if row.trial not in self.shown:
                    self.shown.add(row.trial)
                    self.console.print(
                        self.ended_line(row, board), markup=False, highlight=False, soft_wrap=True
                    )

    def eta(self, board: Board) -> str:
        """Until the study's total at its pace, or with a --timeout until the trials running when
        it passes have finished, whichever comes first."""
        seconds = board.eta()
        if seconds is None:
            return "eta after the first steps"
        if self.timeout:
            left = max(0.0, self.timeout - (time.monotonic() - self.started))
            seconds = min(seconds, left + board.longest_left())
        return "" if seconds <= 0 else f"eta ~{_clock(seconds)}"

    def render(self, board: Board, warning: str | None = None):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        rows = Table.grid(padding=(0, 2))
        for _ in range(5):
            rows.add_column(no_wrap=True)
        for r in sorted(board.running, key=lambda r: r.number):
            p = r.progress
            epoch = f"ep {p.epoch}/{p.epochs}" if p else "ep -"
            bar = _bar(p.share if p else 0.0)
            val = f"val {p.val:.4f}" if p and p.val is not None else "val -"
            params = f"{r.params:,}p" if r.params else "-"
            rows.add_row(f"#{r.number} {params}", _stage(p), epoch, bar, val)
        elapsed = _clock(time.monotonic() - self.started)
        status = f"{counts_line(board)} | {best_line(board.best)} | {elapsed} {self.eta(board)}".rstrip()
        return Group(rows, Text(status), *([Text(f"warning: {warning}", style="yellow")] if warning else []))

    def ended_line(self, row: TrialRow, board: Board) -> str:
        """A trial's end: its figures as the study ranks by (val = mean of the last 3 epochs over
        its seeds, test min3 = their worst), or where it stopped; the study's counts and best."""
        if row.state == "COMPLETE":
            seeds = f"{row.seeds} seed{'s' if row.seeds > 1 else ''}"
            figures = f"val {row.val_acc:.4f} ({seeds}) test min3 {_fmt(row.test_acc_min_last3)} "
        else:
            figures = f"at epoch {row.epochs_run} " if row.epochs_run else ""
        seconds = f"({row.seconds:.0f} s) " if row.seconds is not None else ""
        reason = f" — {row.fail_reason}" if row.fail_reason and row.state != "COMPLETE" else ""
        return (
            f"trial {row.trial} {row.state} {_fmt(row.params, '{:,}')} params {figures}{seconds}"
            f"[{board.tally.done}/{board.total}: {board.tally.words(over_budget=False)}] "
            f"{best_line(board.best)}{reason}"
        )


def _bar(share: float, width: int = 16) -> str:
    done = max(0, min(width, round(share * width)))
    return "━" * done + "╺" + "─" * (width - done - 1) if done < width else "━" * width


class VerifyDisplay:
    """`verify`'s hooks: on a terminal, a live line per pack of seeds (its label, a bar of its
    epochs, epoch k/N, elapsed and remaining time, the seeds' mean test accuracy), whether it
    trains here or in a worker process; a line per finished run everywhere."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.rows: dict[int, int] = {}  # pack index -> its row

    def pack_progress(self, task, epoch: int, share: float, test_acc: float | None) -> None:
        if not self.console.is_terminal:
            return
        if self.progress is None:
            self.progress = make_progress(self.console)
            self.progress.start()
        epochs = task.recipe.epochs
        if task.index not in self.rows:
            self.rows[task.index] = self.progress.add_task(task.label, total=epochs, status="")
        update = {"completed": share * epochs}
        if test_acc is not None:
            update["status"] = f"ep {epoch - 1}/{epochs} test {test_acc:.4f}"
        self.progress.update(self.rows[task.index], **update)

    def packs_ended(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.rows = None, {}

    def run_finished(self, task, seed, result) -> None:
        self.console.print(
            f"trial {task.trial} seed {seed}: test {result.epochs[-1].test_acc:.4f}, "
            f"min(last 3) {result.test_min_last3:.4f}",
            highlight=False,
        )

    def pool_started(self, packs: int, workers: int, threads: int) -> None:
        self.console.print(
            f"{packs} packs of seeds in {workers} worker processes, torch threads each: {threads}",
            highlight=False,
        )


def _fmt(value, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_report(
    console: Console, title: str, rows: list[TrialRow], front: list[TrialRow], tally_line: str
) -> None:
    """`report`: the leaderboard table (completed trials ranked; pruned and failed ones below with
    their reason), the Pareto front, and the study's counts."""
    from rich.table import Table

    table = Table(title=title)
    banded = any(r.band is not None for r in rows)  # a front: each row's size band, ranked within it
    columns = ("rank", "trial", "params", "MACs", "val", "test min3", "target", "ep", "state", "s")
    for col in ("band",) * banded + columns:
        table.add_column(col, justify="right", no_wrap=True)
    reasons = any(r.state != "COMPLETE" and r.fail_reason for r in rows)
    if reasons:
        table.add_column("reason", justify="left", overflow="fold")
    for r in rows:
        cells = [f"< {r.band:,}" if r.band else "-"] * banded + [
            _fmt(r.rank or None, "{}"), str(r.trial), _fmt(r.params, "{:,}"), _fmt(r.mult_adds and r.mult_adds / 1e3, "{:,.0f}k"),
            _fmt(r.val_acc), _fmt(r.test_acc_min_last3), "yes" if r.target_met else "no",
            str(r.epochs_run), r.state[:8], _fmt(r.seconds, "{:.0f}"),
        ]  # fmt: skip
        table.add_row(*cells, *([(r.fail_reason or "") if r.state != "COMPLETE" else ""] if reasons else []))
    (console if console.is_terminal else Console(width=160)).print(table)  # piped: not squeezed to 80 columns
    if front:
        console.print("Pareto front (smallest model per validation-accuracy level):", highlight=False)
        for r in front:
            console.print(f"  trial {r.trial}: {r.params:,} params, val {r.val_acc:.4f}, "
                          f"test min(last 3) {_fmt(r.test_acc_min_last3)}", highlight=False)  # fmt: skip
    else:
        console.print("No completed trial yet, so no Pareto front.", highlight=False)
    console.print(tally_line, highlight=False)
