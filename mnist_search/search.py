"""The search: sampling specs from a space, the budget constraint, the objective, the study.

Sampling (`sample_spec`, `sample_recipe`) is separate from building. The budget is checked on
the spec analytically (`count_params`) before anything is built: an over-budget proposal is
recorded as an infeasible trial through Optuna 5's `trial.set_constraint` (feasible when <= 0),
which the constrained TPE sampler learns from, and costs microseconds. It is never trained.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from .config import ArchSpec, Experiment, Recipe, SearchSpace
from .data import MNISTData
from .model import build_model, count_params, mult_adds
from .train import EpochResult, FitResult, NonFiniteLoss, fit

CONSTRAINT = "params_over_budget"  # params - (budget - 1): <= 0 means params < budget
DEFAULT_STUDY_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "budget-8k.yaml"


# Recipe fields a search space may vary; each is a trial parameter of the same name.
RECIPE_KNOBS = ("lr", "weight_decay", "rotation", "batch_size")


class BudgetError(ValueError):
    """No architecture in the search space fits the budget."""


def sample_spec(trial: optuna.Trial, space: SearchSpace) -> ArchSpec:
    """One architecture from the space: a width per conv, plus the optional choices."""
    stages = tuple(
        tuple(
            trial.suggest_int(name=f"s{i}c{j}", low=r.low, high=r.high, step=r.step)
            for j, r in enumerate(stage, start=1)
        )
        for i, stage in enumerate(space.stages, start=1)
    )
    transitions = tuple(
        trial.suggest_int(name=f"t{i}", low=r.low, high=r.high, step=r.step)
        for i, r in enumerate(space.transitions, start=1)
    )
    d = space.dropout
    dropout = trial.suggest_float(name="dropout", low=d.low, high=d.high) if d.high > d.low else d.low
    return ArchSpec(
        stages=stages,
        transitions=transitions,
        dropout=dropout,
        padding=_choice(trial, "padding", space.padding),
        batchnorm=_choice(trial, "batchnorm", space.batchnorm),
        head=_choice(trial, "head", space.head),
    )


def _choice(trial: optuna.Trial, name: str, options: tuple):
    """One of `options` (a trial parameter only when there is a choice to make)."""
    return trial.suggest_categorical(name=name, choices=list(options)) if len(options) > 1 else options[0]


def sample_recipe(trial: optuna.Trial, space: SearchSpace, base: Recipe) -> Recipe:
    """The base recipe with the searched knobs (lr, weight decay, rotation, batch size) drawn
    from the space; a knob the space leaves out keeps the base recipe's value."""
    updates = {}
    for name in ("lr", "weight_decay", "rotation"):  # float ranges; batch_size is a choice
        r = getattr(space, name)
        if r is not None:
            updates[name] = trial.suggest_float(name=name, low=r.low, high=r.high, log=r.log)
    if space.batch_size:
        updates["batch_size"] = _choice(trial, "batch_size", space.batch_size)
    return base.model_copy(update=updates)


def with_searched_knobs(base: Recipe, params: dict) -> Recipe:
    """`base` with the recipe knobs a trial searched (its `params`, named after Recipe fields by
    `sample_recipe`) — e.g. to retrain a found architecture under a changed recipe."""
    return base.model_copy(update={k: v for k, v in params.items() if k in RECIPE_KNOBS})


def smallest_spec(space: SearchSpace) -> tuple[ArchSpec, int]:
    """The cheapest architecture the space allows (every width at its minimum, cheapest choices)."""
    best = None
    for padding, bn, head in itertools.product(space.padding, space.batchnorm, space.head):
        spec = ArchSpec(
            stages=tuple(tuple(r.low for r in stage) for stage in space.stages),
            transitions=tuple(r.low for r in space.transitions),
            padding=padding,
            batchnorm=bn,
            head=head,
            dropout=space.dropout.low,
        )
        if best is None or count_params(spec) < best[1]:
            best = (spec, count_params(spec))
    return best


def check_budget(space: SearchSpace, budget: int) -> int:
    """Raise BudgetError when even the smallest architecture is not under the budget."""
    _, smallest = smallest_spec(space)
    if smallest >= budget:
        raise BudgetError(
            f"--budget {budget}: no architecture in the search space fits; the smallest has "
            f"{smallest:,} parameters (the budget must exceed it)"
        )
    return smallest


def make_pruner(experiment: Experiment, epochs: int) -> optuna.pruners.BasePruner:
    cfg = experiment.pruner
    if cfg.kind == "median":
        # n_min_trials, not n_startup_trials: Optuna counts every COMPLETE trial towards the
        # latter, over-budget proposals included, so one trained trial would already set the median.
        # n_min_trials counts only trials that reported the epoch, i.e. trained ones.
        return optuna.pruners.MedianPruner(
            n_startup_trials=0, n_warmup_steps=cfg.warmup_epochs, n_min_trials=3
        )
    if cfg.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("feasible", False)


def trained_trials(
    study: optuna.Study, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
) -> list:
    """Trials that were (or are being) trained: feasible ones in the given states."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if feasible(t)]


@dataclass
class TrialRecord:
    """What the objective hands to its observers (tracking, progress) when a trial ends."""

    number: int
    state: str  # COMPLETE / PRUNED / FAIL
    spec: ArchSpec
    recipe: Recipe
    params: int
    result: FitResult
    seconds: float
    reason: str = ""


class TrialHooks:
    """Observers of a trial: the CLI wires MLflow logging and the progress display in here."""

    def trial_started(self, trial: optuna.Trial, spec: ArchSpec, recipe: Recipe) -> None: ...

    def epoch_ended(self, trial: optuna.Trial, r: EpochResult) -> None: ...

    def trial_ended(self, record: TrialRecord, model: torch.nn.Module | None) -> None: ...


class FanOut(TrialHooks):
    """Several observers behind one: each event goes to every hook, in order."""

    def __init__(self, *hooks: TrialHooks):
        self.hooks = hooks

    def trial_started(self, *args) -> None:
        for hook in self.hooks:
            hook.trial_started(*args)

    def epoch_ended(self, *args) -> None:
        for hook in self.hooks:
            hook.epoch_ended(*args)

    def trial_ended(self, *args) -> None:
        for hook in self.hooks:
            hook.trial_ended(*args)


class Objective:
    """Maximise the mean validation accuracy of the last 3 epochs of a budget-feasible spec."""

    def __init__(
        self,
        space: SearchSpace,
        recipe: Recipe,
        budget: int,
        data: MNISTData,
        device: torch.device,
        hooks: TrialHooks,
        *,
        epochs: int,
        seed: int = 0,
        slot: Callable[[optuna.Study, int], str] = lambda study, number: "train",
    ):
        self.space, self.recipe, self.budget = space, recipe, budget
        self.data, self.device, self.hooks = data, device, hooks
        self.epochs, self.seed, self.slot = epochs, seed, slot

    def __call__(self, trial: optuna.Trial) -> float:
        spec = sample_spec(trial, self.space)
        recipe = sample_recipe(trial, self.space, self.recipe)
        params = count_params(spec)
        trial.set_constraint(CONSTRAINT, params - (self.budget - 1))
        trial.set_user_attr("params", params)
        trial.set_user_attr("mult_adds", mult_adds(spec))
        trial.set_user_attr("spec", spec.model_dump(mode="json"))
        if params >= self.budget:
            # Rejected in microseconds: recorded as infeasible so constrained TPE learns from it.
            # The value is never used to rank (best_trial and the report skip infeasible trials).
            trial.set_user_attr("feasible", False)
            return 0.0
        trial.set_user_attr("feasible", True)
        # A dead worker's trial retried inherits its user attributes: it is not training (yet).
        trial.set_user_attr("training", False)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        slot = self.slot(trial.study, trial.number)
        if slot != "train":
            # Not trained, not counted: the study's total is (being) reached by other workers
            # ("stop": this worker ends), or a dead worker's trial waits to be retried ("skip").
            trial.set_user_attr("surplus", True)
            if slot == "stop":
                trial.study.stop()
            raise optuna.TrialPruned(f"not trained ({slot})")
        trial.set_user_attr("training", True)  # now ahead of lower-numbered trials still waiting
        trial.set_user_attr("recipe", recipe.model_dump(mode="json"))
        seed = self.seed + trial.number  # distinct, reproducible initialisation per trial
        result = FitResult()
        start = time.perf_counter()

        def on_epoch(r: EpochResult) -> None:
            result.epochs.append(r)
            self.hooks.epoch_ended(trial, r)
            trial.report(r.val_acc, step=r.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {r.epoch} (val acc {r.val_acc:.4f})")

        def ended(state: str, reason: str = "", trained: torch.nn.Module | None = None) -> None:
            record = TrialRecord(
                trial.number, state, spec, recipe, params, result, time.perf_counter() - start, reason
            )
            trial.set_user_attr("seconds", round(record.seconds, 2))
            trial.set_user_attr("epochs_run", len(result.epochs))
            if result.epochs:
                trial.set_user_attr("test_acc_min_last3", result.test_min_last3)
                trial.set_user_attr("test_acc", result.epochs[-1].test_acc)
                trial.set_user_attr("target_met", result.target_met())
            if reason:
                trial.set_user_attr("fail_reason", reason)
            self.hooks.trial_ended(record, trained)

        try:  # from the trial's start: an interrupt before its first batch is "interrupted" too
            self.hooks.trial_started(trial, spec, recipe)
            model = build_model(spec, seed=seed)
            fit(model, self.data, recipe, self.device, on_epoch, epochs=self.epochs, seed=seed)
        except optuna.TrialPruned as exc:
            ended("PRUNED", str(exc))
            raise
        except NonFiniteLoss as exc:
            ended("FAIL", str(exc))
            raise
        except torch.cuda.OutOfMemoryError:
            ended("FAIL", "CUDA out of memory")
            raise
        except KeyboardInterrupt:
            ended("FAIL", "interrupted")
            raise
        ended("COMPLETE", trained=model)
        return result.val_score


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict:
    """One leaderboard row from the storage alone."""
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "params": trial.user_attrs.get("params"),
        "mult_adds": trial.user_attrs.get("mult_adds"),
        "val_acc": trial.value if trial.state == TrialState.COMPLETE else None,
        "test_acc_min_last3": trial.user_attrs.get("test_acc_min_last3"),
        "target_met": trial.user_attrs.get("target_met", False),
        "epochs_run": trial.user_attrs.get("epochs_run", 0),
        "seconds": trial.user_attrs.get("seconds"),
        "spec": trial.user_attrs.get("spec"),
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "fail_reason": trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason"),
    }


def leaderboard(study: optuna.Study) -> list[dict]:
    """Trained trials ranked by validation score (completed first), with their figures."""
    rows = [trial_summary(t) for t in trained_trials(study) if not t.user_attrs.get("surplus")]
    rows.sort(key=lambda r: (r["val_acc"] is None, -(r["val_acc"] or 0), r["params"] or 0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def pareto_front(rows: list[dict], key: str = "val_acc") -> list[dict]:
    """Completed trials not beaten by another on both fewer params and higher `key`."""
    done = sorted((r for r in rows if r["state"] == "COMPLETE" and r.get(key) is not None),
                  key=lambda r: (r["params"], -r[key]))  # fmt: skip
    front, best = [], -math.inf
    for row in done:
        if row[key] > best:
            front.append(row)
            best = row[key]
    return front


def feasible_share(study: optuna.Study) -> tuple[int, int]:
    """(feasible proposals, all proposals) over the study so far."""
    proposals = [
        t
        for t in study.get_trials(deepcopy=False)
        if "feasible" in t.user_attrs and not t.user_attrs.get("surplus")
    ]
    return sum(feasible(t) for t in proposals), len(proposals)
