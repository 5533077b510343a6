"""Seeds as fidelity: cheap evidence first, the expensive kind only for contenders.

With `staged` fidelity (the default) a proposal trains one seed first, pruned epoch by epoch
against the other trials' first seeds; a proposal that completes trains its other seeds (packed,
as `full` trains them all) only when its one-seed score puts it in contention (`contends`). With
`full` fidelity every proposal trains all its seeds at once, as before. The first trial to finish
its first seed always contends: its mean sets the bar the next ones are judged by.

The ranking rule (`search.leaderboard`): a trial that trained all its seeds is ranked by their
mean, ahead of every trial scored on fewer seeds. One seed is a draw from a spread of 0.05-0.1
points between seeds, as large as the differences a search ranks; it is never evidence enough to
outrank a mean of seeds. The one-seed trials follow, by their own score.

In a front (`search.bands`: two objectives, no Optuna pruner applies) both judgements are made
within a trial's size band: its first seed contends against the bar of its band, and its epochs
are pruned against its band's median (`BandMedian`), so a small net is compared with small nets.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import optuna
from optuna.trial import TrialState

from mnist_search.search.bands import Bands
from mnist_search.search.records import TrialRecord

FIDELITIES = ("staged", "full")
# A first-seed score within this much of the bar contends: about one seed-to-seed spread (0.05-0.1
# points), so a proposal whose mean may well be the best is not left at one seed.
MARGIN = 0.001


def seeds_trained(trial: optuna.trial.FrozenTrial) -> int:
    """How many seeds a trial's figures are over (its fidelity). Trials recorded before staged
    fidelity trained all of theirs."""
    record = TrialRecord.of(trial)
    if record.seeds is not None:
        return len(record.seeds)
    return int((record.recipe or {}).get("replicas", 1))


def all_seeds(trial: optuna.trial.FrozenTrial) -> bool:
    """Did the trial train every seed its recipe asks for (its score a mean of all of them)?"""
    planned = int((TrialRecord.of(trial).recipe or {}).get("replicas", 1))
    return seeds_trained(trial) >= planned


def val_score(trial: optuna.trial.FrozenTrial) -> float | None:
    """A finished trial's validation score: its value, or a front's first objective."""
    return trial.values[0] if trial.values else None


def same_band(
    others: Iterable[optuna.trial.FrozenTrial], bands: Bands | None, params: int | None
) -> list[optuna.trial.FrozenTrial]:
    """The trials a trial of `params` parameters is judged against: all of them in a one-budget
    study, those of its own size band in a front."""
    if bands is None:
        return list(others)
    band = bands.of(params)
    return [t for t in others if bands.of(TrialRecord.of(t).params) == band]


def bar(others: Iterable[optuna.trial.FrozenTrial]) -> float | None:
    """What a first seed must come near to contend: the best mean of seeds so far, or the first-seed
    score of a contender still training its other seeds (its mean is on the way); None before any."""
    scores = []
    for t in others:
        record = TrialRecord.of(t)
        value = val_score(t) if t.state == TrialState.COMPLETE else None
        if value is not None and all_seeds(t) and seeds_trained(t) > 1:
            scores.append(value)
        elif t.state == TrialState.RUNNING and record.contender and record.first_score is not None:
            scores.append(record.first_score)
    return max(scores, default=None)


def contends(score: float, others: Iterable[optuna.trial.FrozenTrial]) -> bool:
    """Does a first-seed score earn its trial the other seeds? When it is within MARGIN of the
    `bar`, and always for the first trial to get there (it sets the bar)."""
    best = bar(others)
    return best is None or score >= best - MARGIN


class BandMedian:
    """Optuna's median rule (`MedianPruner(n_warmup_steps=W, n_min_trials=3)`) within a size band,
    for a front, where Optuna's pruners do not apply (no `trial.report` with two objectives).

    After epoch `epoch` >= W, a trial whose best first-seed validation accuracy so far is below the
    median of its band's completed trials at that epoch (their `curve`s, over >= `min_trials` of
    them) is pruned."""

    def __init__(self, bands: Bands, warmup_epochs: int, min_trials: int = 3):
        self.bands, self.warmup_epochs, self.min_trials = bands, warmup_epochs, min_trials

    def median(self, others: Iterable[optuna.trial.FrozenTrial], params: int, epoch: int) -> float | None:
        """The band's median at `epoch` (None with fewer than `min_trials` to take it over)."""
        done = [t for t in same_band(others, self.bands, params) if t.state == TrialState.COMPLETE]
        values = [curve[epoch - 1] for t in done if len(curve := TrialRecord.of(t).curve or []) >= epoch]
        return statistics.median(values) if len(values) >= self.min_trials else None

    def prune(self, others: Iterable[optuna.trial.FrozenTrial], params: int, curve: list[float]) -> bool:
        """Does a trial whose first seed's epochs so far scored `curve` stop here?"""
        epoch = len(curve)
        if epoch < self.warmup_epochs:
            return False
        median = self.median(others, params, epoch)
        return median is not None and max(curve) < median
