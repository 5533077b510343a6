"""`mnist-search report`: a study's leaderboard and Pareto front, read from its storage alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mnist_search.search.bands import Bands
from mnist_search.search.leaderboard import (
    Tally,
    TrialRow,
    feasible_share,
    leaderboard,
    pareto_front,
    trial_tally,
)
from mnist_search.search.records import StudyRecord
from mnist_search.search.studies import load_study


@dataclass
class StudyReport:
    study: str
    budget: int | None
    rows: list[TrialRow]  # ranked by validation
    front: list[TrialRow]  # the Pareto front of params against validation accuracy
    feasible: int  # proposals under the budget ...
    proposed: int  # ... of all proposals
    tally: Tally

    def counts_line(self) -> str:
        return (
            f"{self.tally.done} trial{'' if self.tally.done == 1 else 's'} done: "
            f"{self.tally.words(over_budget=False)}; "
            f"{self.feasible}/{self.proposed} proposals were under the budget."
        )

    def to_json(self) -> dict:
        return {
            "study": self.study, "budget": self.budget, "proposals": self.proposed, "feasible": self.feasible,
            "counts": {"done": self.tally.done, **asdict(self.tally)},
            "trials": [r.to_dict() for r in self.rows], "pareto_front": [r.trial for r in self.front],
        }  # fmt: skip


def study_report(study_name: str | None, storage: str | None) -> StudyReport:
    study = load_study(study_name, storage)
    budgets = StudyRecord.of(study).budgets  # a front: ranked within each size band
    rows = leaderboard(study, Bands(tuple(budgets)) if budgets else None)
    feasible, proposed = feasible_share(study)
    return StudyReport(
        study.study_name,
        StudyRecord.of(study).budget,
        rows,
        pareto_front(rows),
        feasible,
        proposed,
        trial_tally(study),
    )
