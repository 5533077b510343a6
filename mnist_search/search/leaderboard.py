"""A study's results from its storage alone: ranked rows, the Pareto front, the feasible share, and
the counts of trained trials every worker and display reads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import optuna
from optuna.trial import TrialState

from mnist_search.search.bands import Bands
from mnist_search.search.fidelity import all_seeds, seeds_trained, val_score
from mnist_search.search.records import INTERRUPTED, WORKER_DIED, TrialRecord


def counts_toward_total(trial: optuna.trial.FrozenTrial) -> bool:
    """Trained trials that ended on their own: completed, pruned, or failed for a reason of
    their own (NaN loss, out of memory). Interrupted trials and trials of killed workers do not
    count, so running the command again replaces them."""
    record = TrialRecord.of(trial)
    if record.feasible is not True or record.surplus:
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        reason = record.fail_reason or ""
        return bool(reason) and reason != INTERRUPTED and not reason.startswith(WORKER_DIED)
    return False


@dataclass(frozen=True)
class Tally:
    """A study's trials by how they ended, as every display, report and MLflow count them. `done`
    (what --trials counts) = trained (to their last epoch) + pruned + failed (for a reason of their
    own); interrupted trials are trained again and over-budget proposals never train."""

    trained: int
    pruned: int
    failed: int
    over_budget: int
    interrupted: int = 0

    @property
    def done(self) -> int:
        return self.trained + self.pruned + self.failed

    @classmethod
    def of(cls, trials: list[optuna.trial.FrozenTrial]) -> Tally:
        counted = [t.state for t in trials if counts_toward_total(t)]
        return cls(
            trained=counted.count(TrialState.COMPLETE),
            pruned=counted.count(TrialState.PRUNED),
            failed=counted.count(TrialState.FAIL),
            over_budget=sum(TrialRecord.of(t).feasible is False for t in trials),
            interrupted=sum(interrupted(t) for t in trials),
        )

    def words(self, over_budget: bool = True) -> str:
        """ "2 trained, 1 pruned, 0 failed[, 7 over budget]"."""
        words = f"{self.trained} trained, {self.pruned} pruned, {self.failed} failed"
        return words + (f", {self.over_budget} over budget" if over_budget else "")


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """FAILed for a reason not its own (an interrupt, a dead worker): it does not count."""
    reason = TrialRecord.of(trial).fail_reason or ""
    return trial.state == TrialState.FAIL and (reason == INTERRUPTED or reason.startswith(WORKER_DIED))


def trial_tally(study: optuna.Study) -> Tally:
    return Tally.of(study.get_trials(deepcopy=False))


def resume_summary(study: optuna.Study) -> str:
    """What a study already holds, for the line that says a run resumes it ("" for a new study):
    its proposals, the trained ones that count, the interrupted ones (not counted: their places
    are trained again) and the ones over budget (never trained). Trials only queued (WAITING: a
    new study's start points, `search.start`) are not yet anything to resume."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not trials:
        return ""
    tally = Tally.of(trials)
    return (
        f"resuming {len(trials)} trial{'s' if len(trials) != 1 else ''} ({tally.done} done: "
        f"{tally.words(over_budget=False)}; {tally.interrupted} interrupted and trained again, "
        f"{tally.over_budget} over budget)"
    )


def trials_training(study: optuna.Study) -> int:
    """How many of the study's trials hold a training slot now, on every worker and machine."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if TrialRecord.of(t).training
    )


def trials_done(study: optuna.Study) -> int:
    return trial_tally(study).done


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return TrialRecord.of(trial).feasible is True


def trained_trials(
    study: optuna.Study, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
) -> list[optuna.trial.FrozenTrial]:
    """Trials that were (or are being) trained: feasible ones in the given states."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if feasible(t)]


@dataclass
class TrialRow:
    """One leaderboard row."""

    trial: int
    state: str  # COMPLETE / PRUNED / FAIL
    params: int | None
    mult_adds: int | None
    val_acc: float | None  # the objective (mean val acc of the last 3 epochs); COMPLETE only
    test_acc_min_last3: float | None
    target_met: bool
    epochs_run: int
    seconds: float | None
    spec: dict | None
    mlflow_run_id: str | None
    fail_reason: str | None
    seeds: int = 1  # its figures are over this many seeds (its fidelity)
    all_seeds: bool = True  # as many as its recipe asks for (else staged fidelity left it at one)
    rank: int = 0  # 1 = best; in a front, within its size band
    band: int | None = None  # a front's trial: its size band (`search.bands`)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRow:
        rec = TrialRecord.of(trial)
        return cls(
            trial=trial.number,
            state=trial.state.name,
            params=rec.params,
            mult_adds=rec.mult_adds,
            val_acc=val_score(trial) if trial.state == TrialState.COMPLETE else None,
            test_acc_min_last3=rec.test_acc_min_last3,
            target_met=rec.target_met,
            epochs_run=rec.epochs_run,
            seconds=rec.seconds,
            spec=rec.spec,
            mlflow_run_id=rec.mlflow_run_id,
            fail_reason=rec.fail_reason or trial.system_attrs.get("fail_reason"),
            seeds=seeds_trained(trial),
            all_seeds=all_seeds(trial),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def rank_key(row: TrialRow) -> tuple:
    """Completed trials first; of them, those scored on all their seeds (by the seeds' mean) ahead
    of those scored on fewer (`search.fidelity`: one seed never outranks a mean of seeds); then by
    validation score, fewer params first on a tie."""
    return (row.val_acc is None, not row.all_seeds, -(row.val_acc or 0), row.params or 0)


def leaderboard(study: optuna.Study, bands: Bands | None = None, under: int | None = None) -> list[TrialRow]:
    """Trained trials in `rank_key` order, with their figures; completed ones ranked from 1. With
    `bands` (a front) each row has its band and is ranked within it, smallest band first; with
    `under`, only trials of fewer parameters (a front's answer for that budget)."""
    rows = [TrialRow.of(t) for t in trained_trials(study) if not TrialRecord.of(t).surplus]
    if under is not None:
        rows = [r for r in rows if r.params is not None and r.params < under]
    if bands is None:
        rows.sort(key=rank_key)
        groups = [rows]
    else:
        for row in rows:
            row.band = bands.of(row.params)
        groups = [sorted((r for r in rows if r.band == b), key=rank_key) for b in bands.budgets]
        rows = [r for group in groups for r in group]
    for group in groups:
        for rank, row in enumerate(completed(group), start=1):  # pruned and failed trials have no rank (0)
            row.rank = rank
    return rows


def completed(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.state == "COMPLETE"]


def pareto_front(rows: list[TrialRow], key: str = "val_acc") -> list[TrialRow]:
    """Completed trials not beaten by another on both fewer params and higher `key`."""
    done = sorted((r for r in completed(rows) if getattr(r, key) is not None),
                  key=lambda r: (r.params, -getattr(r, key)))  # fmt: skip
    front, best = [], -math.inf
    for row in done:
        if getattr(row, key) > best:
            front.append(row)
            best = getattr(row, key)
    return front


def feasible_share(study: optuna.Study) -> tuple[int, int]:
    """(feasible proposals, all proposals) over the study so far."""
    records = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    proposals = [r for r in records if r.feasible is not None and not r.surplus]
    return sum(r.feasible for r in proposals), len(proposals)
