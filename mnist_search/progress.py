"""What the CLI shows: progress (a live rich display on a terminal, plain lines or nothing
otherwise), the study leaderboard and its summary line.

Library code never prints; the CLI hands `EpochProgress.update` to `fit` as its `on_epoch` callback.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

from mnist_search.core.model import count_params
from mnist_search.core.results import EpochResult, mean_epoch
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


class StudyProgress:
    """Trials done / planned, the running trial (size, epoch k/N), pruned, failed, best so far,
    elapsed and ETA.

    "best" is the study's best completed trial: its params, validation accuracy (mean of its
    last 3 epochs: the objective) and test accuracy (min of its last 3 epochs). `study_best`
    reads it from the storage (at the start and after each trial here), so it includes trials of
    earlier runs and of other workers; without it, the best of the trials seen here. Likewise
    `study_tally` reads the study's (trained, pruned, failed) counts, so that "done" is the
    study's with other workers (each `--jobs` process, other machines) training beside this one;
    without it, `already` plus the trials ended here. `study_training` counts the trials training
    in the study now (this one included): the ETA divides the trials left among them, so that a
    worker sharing its study with others does not promise their work at its own pace alone.

    A live rich display on a terminal; plain log lines (one per finished trial) when output is
    not a terminal or with --quiet.
    """

    def __init__(
        self,
        console: Console,
        total: int,
        already: int,
        quiet: bool = False,
        study_best: Callable[[], TrialRow | None] | None = None,
        study_tally: Callable[[], tuple[int, int, int]] | None = None,
        study_training: Callable[[], int] | None = None,
    ):
        self.console = console
        self.live = console.is_terminal and not quiet
        self.total, self.done = total, already
        self.pruned = self.failed = 0
        self.study_best, self.study_tally = study_best, study_tally
        self.study_training = study_training
        self.workers = 1  # trials training in the study at the last look (see _eta)
        self._take_study_tally()
        self.best: tuple[float, int, float, int] | None = None  # val, params, test, trial
        self._take_study_best()
        self.progress = make_progress(console, eta=True) if self.live else None
        self.task = None
        self.durations: list[float] = []  # of the trials trained here
        self.running = ""  # "#7 7,520p", the trial training now
        self.started = 0.0  # when it started (monotonic)

    @classmethod
    def for_session(cls, console: Console, session, quiet: bool = False) -> StudyProgress:
        """The display of a prepared study (`workflows.study.prepare_study`), reading the study's
        best, counts and training trials from its storage."""
        from mnist_search.search.leaderboard import completed, leaderboard, trial_tally, trials_training

        study = session.study
        return cls(
            console, session.request.trials, session.done, quiet=quiet,
            study_best=lambda: next(iter(completed(leaderboard(study))), None),
            study_tally=lambda: trial_tally(study), study_training=lambda: trials_training(study),
        )  # fmt: skip

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(
                "trials", total=self.total, completed=self.done, status="", eta=self._eta()
            )
        return self

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return ""
        if not self.durations:
            return "eta after 1st trial"
        running = time.monotonic() - self.started if self.running else 0.0
        if self.study_training is not None:  # read where it is shown: never with plain lines
            self.workers = max(1, self.study_training())
        # The trials left run `workers` at a time, each taking a trial's mean time; the running
        # ones (this one's elapsed time stands in for the others') are part done.
        per_worker = statistics.fmean(self.durations) * left / self.workers
        return f"eta {_clock(max(0.0, per_worker - running))}"

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _consider(self, best: tuple[float, int, float, int]) -> None:
        if self.best is None or best[0] > self.best[0]:
            self.best = best

    def _take_study_best(self) -> None:
        row = self.study_best() if self.study_best is not None else None
        if row is not None and row.val_acc is not None:
            self._consider((row.val_acc, row.params or 0, row.test_acc_min_last3 or 0.0, row.trial))

    def _take_study_tally(self, ended: tuple[int, int, int] = (0, 0, 0)) -> None:
        """The study's counts, plus `ended` (a trial ended here, not stored as ended yet); never
        fewer than counted here."""
        if self.study_tally is not None:
            stored = self.study_tally()
            self.done, self.pruned, self.failed = (
                max(mine, theirs + this)
                for mine, theirs, this in zip((self.done, self.pruned, self.failed), stored, ended)
            )

    def _status(self) -> str:
        best = "-"
        if self.best:
            val, params, test, trial = self.best
            best = f"#{trial} {params:,}p val {val:.4f} test min3 {test:.4f}"
        return f"pruned {self.pruned} failed {self.failed} best {best}"

    # TrialHooks
    def trial_started(self, trial, spec, recipe) -> None:
        self.running, self.epochs = f"#{trial.number} {count_params(spec):,}p", recipe.epochs
        self.started = time.monotonic()
        if self.progress is not None:
            self.progress.update(self.task, description=f"{self.running} ep 0/{self.epochs}", eta=self._eta())

    def epoch_ended(self, trial, r, per_seed) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                description=f"{self.running} ep {r.epoch}/{self.epochs}",
                status=f"val {r.val_acc:.4f} | {self._status()}",
                eta=self._eta(),
            )

    def trial_ended(self, end, model) -> None:
        if end.reason == "interrupted":
            return
        ended = (1, int(end.state == "PRUNED"), int(end.state == "FAIL"))
        self.done, self.pruned, self.failed = (
            n + e for n, e in zip((self.done, self.pruned, self.failed), ended)
        )
        self.durations.append(end.seconds)
        self.running = ""
        res = end.result
        # Other workers' trials (this one is not stored as ended yet).
        self._take_study_tally(ended)
        self._take_study_best()
        if end.state == "COMPLETE":
            self._consider((res.val_score, end.params, res.test_min_last3, end.number))
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, status=self._status(), eta=self._eta())
        else:
            # The figures the study ranks by, as in "best" and `report`: val = mean of the last 3
            # epochs, test min3 = their minimum. A trial stopped early: its last epoch.
            last = res.epochs[-1] if res.epochs else None
            if end.state == "COMPLETE":
                figures = f"val {res.val_score:.4f} test min3 {res.test_min_last3:.4f} "
            else:
                figures = f"val {last.val_acc:.4f} at epoch {last.epoch} " if last else ""
            self.console.print(
                f"trial {end.number} {end.state} {end.params:,} params {figures}"
                f"({end.seconds:.0f} s) [{self.done}/{self.total}] {self._status()}"
                + (f" — {end.reason}" if end.reason else ""),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


class VerifyDisplay:
    """`verify`'s hooks: a progress bar per pack of seeds trained here (the seeds' mean), one line
    per finished run."""

    def __init__(self, console: Console):
        self.console = console

    @contextmanager
    def run_progress(self, task) -> Iterator:
        with EpochProgress(task.recipe.epochs, self.console, label=task.label) as bar:
            yield lambda epoch: bar.update(mean_epoch(epoch))

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
    console: Console, title: str, rows: list[TrialRow], front: list[TrialRow], share: tuple[int, int]
) -> None:
    """`report`: the leaderboard table, the Pareto front, and the share of proposals under budget."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "trial", "params", "MACs", "val", "test min3", "target", "ep", "state", "s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r.rank), str(r.trial), _fmt(r.params, "{:,}"), _fmt(r.mult_adds and r.mult_adds / 1e3, "{:,.0f}k"),
            _fmt(r.val_acc), _fmt(r.test_acc_min_last3), "yes" if r.target_met else "no",
            str(r.epochs_run), r.state[:8], _fmt(r.seconds, "{:.0f}"),
        )  # fmt: skip
    (console if console.is_terminal else Console(width=120)).print(table)  # piped: not squeezed to 80 columns
    console.print("Pareto front (smallest model per validation-accuracy level):", highlight=False)
    for r in front:
        console.print(f"  trial {r.trial}: {r.params:,} params, val {r.val_acc:.4f}, "
                      f"test min(last 3) {_fmt(r.test_acc_min_last3)}", highlight=False)  # fmt: skip
    console.print(f"{share[0]}/{share[1]} proposals were under the budget.", highlight=False)
