"""What a study looks like right now, read from its storage alone: the trials training (each one's
stage, epoch and latest validation score, written by whichever worker trains it), the counts, the
best so far and an estimate of the time left. Every display reads this (`progress.StudyDisplay`),
whether the trials train in its own process, in `--jobs` workers or on other machines.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import optuna
from optuna.trial import TrialState

from mnist_search.search.leaderboard import Tally, TrialRow, completed, counts_toward_total, leaderboard
from mnist_search.search.records import TrialRecord

WRITE_EVERY = 5.0  # seconds between a worker's progress writes within an epoch


@dataclass(frozen=True)
class TrialProgress:
    """Where a training trial is, as its worker stores it (TrialRecord.progress)."""

    seeds: int  # seeds training in this stage
    stage: int  # 1, or 2 once a staged trial trains its other seeds
    epoch: int  # the epoch training now, 1-based
    epochs: int
    share: float  # of this stage's steps done, 0..1
    val: float | None  # the latest finished epoch's validation accuracy (seed mean)
    since: float  # when this stage started (Unix time)
    at: float  # when this was written

    def stage_left(self) -> float | None:
        """Seconds left in this stage at its pace so far (None before a first measure)."""
        if self.share <= 0.0:
            return None
        spent = self.at - self.since
        return spent * (1.0 - self.share) / self.share

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialProgress | None:
        raw = TrialRecord.of(trial).progress
        return cls(**raw) if raw else None


class ProgressWriter:
    """A trial's worker side: stores `TrialProgress` at each stage's start, each epoch's end and at
    most every WRITE_EVERY seconds within an epoch (an append to the journal, a row in a
    database), so a display anywhere can show it."""

    def __init__(self, trial: optuna.Trial, epochs: int, clock=time.time):
        self.trial, self.epochs, self.clock = trial, epochs, clock
        self.seeds = self.stage = 0
        self.since = self.last = 0.0
        self.val: float | None = None

    def start(self, stage: int, seeds: int) -> None:
        self.stage, self.seeds, self.val = stage, seeds, None
        self.since = now = self.clock()
        self._write(1, 0.0, now)

    def step(self, epoch: int, share_of_epoch: float) -> None:
        now = self.clock()
        if now - self.last >= WRITE_EVERY:
            self._write(epoch, ((epoch - 1) + share_of_epoch) / self.epochs, now)

    def epoch(self, epoch: int, val: float) -> None:
        self.val = val
        self._write(min(epoch + 1, self.epochs), epoch / self.epochs, self.clock())

    def _write(self, epoch: int, share: float, now: float) -> None:
        self.last = now
        record = TrialProgress(self.seeds, self.stage, epoch, self.epochs, share, self.val, self.since, now)
        TrialRecord.write(self.trial, progress=asdict(record))


@dataclass(frozen=True)
class Running:
    number: int
    params: int | None
    progress: TrialProgress | None


@dataclass(frozen=True)
class Board:
    """A study at one moment."""

    total: int  # trials done (--trials) the study runs to
    tally: Tally  # its trials by how they ended
    running: list[Running]
    best: TrialRow | None
    ended: list[TrialRow]  # counted trials, in the order they ended
    mean_seconds: float | None  # of the counted trials that finished
    now: float

    @classmethod
    def read(cls, study: optuna.Study, total: int, now: float | None = None) -> Board:
        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if counts_toward_total(t)]
        running = [
            Running(t.number, TrialRecord.of(t).params, TrialProgress.of(t))
            for t in trials
            if t.state == TrialState.RUNNING and TrialRecord.of(t).training
        ]
        seconds = [s for t in counted if (s := TrialRecord.of(t).seconds)]
        order = sorted(counted, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        rows = leaderboard(study)
        return cls(
            total=total,
            tally=Tally.of(trials),
            running=running,
            best=next(iter(completed(rows)), None),
            ended=[TrialRow.of(t) for t in order],
            mean_seconds=statistics.fmean(seconds) if seconds else None,
            now=time.time() if now is None else now,
        )

    def longest_left(self) -> float:
        """Seconds until the last of the running trials' stages ends, at their pace so far."""
        lefts = [
            max(0.0, left - (self.now - r.progress.at))
            for r in self.running
            if r.progress is not None and (left := r.progress.stage_left()) is not None
        ]
        return max(lefts, default=0.0)

    def eta(self) -> float | None:
        """Seconds until the study's total at the pace so far: the trials not started yet take the
        finished trials' mean time (before any finished, the running trials' projected time), the
        running ones what their stage has left, and they share the trials training now.
        None before anything was measured."""
        left = self.total - self.tally.done
        if left <= 0:
            return 0.0
        projected = []
        remaining = 0.0
        for r in self.running:
            p = r.progress
            stage_left = p.stage_left() if p else None
            if stage_left is None:
                continue
            remaining += max(0.0, stage_left - (self.now - p.at))
            projected.append((p.at - p.since) / p.share)
        per_trial = self.mean_seconds or (statistics.fmean(projected) if projected else None)
        if per_trial is None:
            return None
        unstarted = max(0, left - len(self.running))
        workers = max(1, len(self.running))
        return (remaining + unstarted * per_trial) / workers
