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
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna
from optuna.trial import TrialState

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


def bar(others: Iterable[optuna.trial.FrozenTrial]) -> float | None:
    """What a first seed must come near to contend: the best mean of seeds so far, or the first-seed
    score of a contender still training its other seeds (its mean is on the way); None before any."""
    scores = []
    for t in others:
        record = TrialRecord.of(t)
        if t.state == TrialState.COMPLETE and t.value is not None and all_seeds(t) and seeds_trained(t) > 1:
            scores.append(t.value)
        elif t.state == TrialState.RUNNING and record.contender and record.first_score is not None:
            scores.append(record.first_score)
    return max(scores, default=None)


def contends(score: float, others: Iterable[optuna.trial.FrozenTrial]) -> bool:
    """Does a first-seed score earn its trial the other seeds? When it is within MARGIN of the
    `bar`, and always for the first trial to get there (it sets the bar)."""
    best = bar(others)
    return best is None or score >= best - MARGIN
