"""What we store on Optuna trials and studies (their user attributes), as typed records.

Every attribute key is a field name here and nowhere else: code reads `TrialRecord.of(trial).params`
and writes `TrialRecord.write(trial, params=...)`, so a misspelt key is an error, not a silent None.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

# Reasons a trial FAILs that are not the trial's own: it does not count, and is trained again.
INTERRUPTED = "interrupted"
WORKER_DIED = "worker died"


class _Record:
    _keys: ClassVar[frozenset[str]]

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]):
        return cls(**{key: attrs[key] for key in cls._keys if key in attrs})

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - cls._keys
        if unknown:
            raise KeyError(f"{cls.__name__} has no field {min(unknown)!r}")
        return values

    @classmethod
    def write(cls, target, **values: Any) -> None:
        """Store `values` as user attributes of `target` (an Optuna trial or study)."""
        for key, value in cls._checked(values).items():
            target.set_user_attr(key, value)

    @classmethod
    def store(cls, storage, trial_id: int, **values: Any) -> None:
        """Store `values` on a trial this process does not hold (by its storage id)."""
        for key, value in cls._checked(values).items():
            storage.set_trial_user_attr(trial_id, key, value)


# What a summary says for trials made before trials recorded their device.
UNRECORDED_DEVICE = "not recorded"


@dataclass(frozen=True)
class TrialRecord(_Record):
    """One trial's attributes: its proposal, its claim on a training slot, and its outcome."""

    feasible: bool | None = None  # under the budget? None while the proposal is being sampled
    params: int | None = None  # trainable parameters of the proposed spec
    mult_adds: int | None = None  # per image
    spec: dict | None = None  # ArchSpec as JSON
    recipe: dict | None = None  # Recipe as JSON (with the searched knobs applied)
    training: bool = False  # holds a training slot (see studies.ahead_of)
    surplus: bool = False  # not trained: the study's total was (being) reached by other workers
    worker: str | None = None  # its owner process, host:pid:start time (see owners.Owner)
    seconds: float | None = None  # wall time of its training
    device: str | None = None  # what it trained on: cpu, cuda
    epochs_run: int = 0
    test_acc: float | None = None  # last epoch
    test_acc_min_last3: float | None = None  # with several seeds: the worst seed's
    seeds: list[int] | None = None  # its figures are over these (fewer than recipe.replicas: staged)
    pack_layout: str | None = None  # how its replicas were laid out: grouped or separate (layout.py)
    val_acc_worst: float | None = None  # several seeds: the worst seed's validation score
    target_met: bool = False  # test acc >= TARGET in each of the last 3 epochs
    fail_reason: str | None = None  # why it FAILed or was pruned
    error: bool = False  # it FAILed on an error not of its own making (not a NaN loss, not its score)
    mlflow_run_id: str | None = None  # its child run
    first_score: float | None = None  # staged fidelity: its first seed's score (the objective's kind)
    contender: bool | None = None  # staged fidelity: did that score earn it its other seeds?
    progress: dict | None = None  # while it trains: `search.board.Progress`, for the displays
    curve: list[float] | None = None  # a front's trial: its first seed's val acc per epoch (BandMedian)

    @classmethod
    def of(cls, trial) -> TrialRecord:
        return cls.from_attrs(trial.user_attrs)


@dataclass(frozen=True)
class StudyRecord(_Record):
    """A study's attributes, set when it is created (and the MLflow parent run once it exists)."""

    budget: int | None = None
    experiment_file: str | None = None  # path or shipped name, as given
    epochs: int | None = None  # per trial
    command: str | None = None  # the command that created it (passwords masked)
    mlflow_parent_run_id: str | None = None
    verified: dict | None = None  # its best trial verified at its end: {trial, claim, run_id}
    budgets: list[int] | None = None  # a front (two objectives): its size bands (`search.bands`)

    @classmethod
    def of(cls, study) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)


TrialRecord._keys = frozenset(f.name for f in fields(TrialRecord))
StudyRecord._keys = frozenset(f.name for f in fields(StudyRecord))
