"""What a training run reports: each epoch's figures, a run's epochs, and several seeds' runs of
one spec read as one. Plain data, shared by training (which fills it), the search (which scores
it) and tracking (which logs it under the names in `tracking.names`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mnist_search.core.config import TARGET


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float
    lr: float  # learning rate at the end of the epoch
    epoch_seconds: float


@dataclass
class FitResult:
    epochs: list[EpochResult] = field(default_factory=list)

    def last(self, n: int, key: str) -> list[float]:
        return [getattr(e, key) for e in self.epochs[-n:]]

    @property
    def val_score(self) -> float:
        """Mean validation accuracy over the last 3 epochs: what a search optimises."""
        vals = self.last(3, "val_acc")
        return sum(vals) / len(vals)

    @property
    def test_min_last3(self) -> float:
        return min(self.last(3, "test_acc"))

    def target_met(self, target: float = TARGET) -> bool:
        """Test accuracy >= target in each of the last 3 epochs (and at least 3 epochs run)."""
        return len(self.epochs) >= 3 and self.test_min_last3 >= target

    def to_dict(self) -> dict:
        return {"epochs": [asdict(e) for e in self.epochs]}


@dataclass
class ReplicaResults:
    """One spec trained with several seeds at once (`fit_replicas`): each seed's results, and
    the figures a search reads off them. Reads like a FitResult (val_score, test_min_last3,
    target_met, epochs), so one seed is just the case K = 1."""

    seeds: list[int]
    results: list[FitResult]
    layout: str = ""  # how the replicas were laid out (packed.py), once chosen

    @classmethod
    def empty(cls, seeds: Sequence[int]) -> ReplicaResults:
        return cls(list(seeds), [FitResult() for _ in seeds])

    def add(self, epoch: Sequence[EpochResult]) -> None:
        for result, r in zip(self.results, epoch):
            result.epochs.append(r)

    @property
    def epochs(self) -> list[EpochResult]:
        """The mean over seeds, epoch by epoch (the time is the pack's)."""
        if len(self.results) == 1:
            return self.results[0].epochs
        return [mean_epoch(rs) for rs in zip(*(r.epochs for r in self.results))]

    @property
    def val_score(self) -> float:
        """The objective: the mean over seeds of each seed's mean val accuracy of its last 3 epochs."""
        return sum(r.val_score for r in self.results) / len(self.results)

    @property
    def val_worst(self) -> float:
        return min(r.val_score for r in self.results)

    @property
    def test_min_last3(self) -> float:
        """The worst seed's minimum test accuracy over its last 3 epochs."""
        return min(r.test_min_last3 for r in self.results)

    def target_met(self, target: float = TARGET) -> bool:
        """In every seed: test accuracy >= target in each of the last 3 epochs."""
        return all(r.target_met(target) for r in self.results)

    @property
    def best(self) -> int:
        """Index of the seed with the best validation score (the model a trial hands out)."""
        return max(range(len(self.results)), key=lambda i: self.results[i].val_score)


def mean_epoch(rs: Sequence[EpochResult]) -> EpochResult:
    """The mean of several seeds' results for one epoch."""

    def mean(key: str) -> float:
        return sum(getattr(r, key) for r in rs) / len(rs)

    first = rs[0]
    return EpochResult(
        first.epoch, mean("train_loss"), mean("train_acc"), mean("val_loss"), mean("val_acc"),
        mean("test_loss"), mean("test_acc"), first.lr, first.epoch_seconds,
    )  # fmt: skip
