"""Sampling a spec and a recipe from a search space, and the parameter budget on specs.

Sampling is separate from building: `sample_spec` returns an `ArchSpec`, nothing is built. The
budget is checked on the spec analytically (`count_params`) before anything is built or trained.
"""

from __future__ import annotations

import itertools

import optuna

from mnist_search.core.config import ArchSpec, Recipe, SearchSpace
from mnist_search.core.errors import BudgetError
from mnist_search.core.model import count_params

# The constraint Optuna 5 records per trial (trial.set_constraint): params - (budget - 1), so that
# <= 0 (feasible) means params < budget.
CONSTRAINT = "params_over_budget"
# optuna-dashboard (0.21) reads only the list format Optuna 4 wrote (system attr "constraints"),
# not Optuna 5's per-name keys: without it the dashboard cannot tell an infeasible trial.
DASHBOARD_CONSTRAINTS = "constraints"

# Recipe fields a search space may vary; each is a trial parameter of the same name.
RECIPE_KNOBS = ("lr", "weight_decay", "rotation", "batch_size")


def record_budget(trial: optuna.Trial, params: int, budget: int) -> bool:
    """Record the budget constraint on the trial (for TPE, and in the form optuna-dashboard
    reads); True when the spec is under budget."""
    violation = params - (budget - 1)
    trial.set_constraint(CONSTRAINT, violation)
    # Optuna 5 reads this list too, as a second constraint "0" of the same value: feasibility and
    # TPE's ranking of infeasible trials (by summed violation) are unchanged.
    trial.storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS, [float(violation)])
    return violation <= 0


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
        separable=_choice(trial, "separable", space.separable),
        pool=_choice(trial, "pool", space.pool),
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
    choices = itertools.product(space.padding, space.batchnorm, space.head, space.separable)
    for padding, bn, head, separable in choices:
        spec = ArchSpec(
            stages=tuple(tuple(r.low for r in stage) for stage in space.stages),
            transitions=tuple(r.low for r in space.transitions),
            padding=padding,
            batchnorm=bn,
            head=head,
            dropout=space.dropout.low,
            separable=separable,
            pool=space.pool[0],  # no parameters either way
        )
        if best is None or count_params(spec) < best[1]:
            best = (spec, count_params(spec))
    return best


def check_budget(space: SearchSpace, budget: int, name: str = "the", flag: str = "--budget") -> int:
    """Raise BudgetError when even the smallest architecture is not under the budget (`name`:
    the experiment's, for the message; `flag`: the option that gave the budget)."""
    _, smallest = smallest_spec(space)
    if smallest >= budget:
        raise BudgetError(
            f"{flag} {budget}: no architecture in {name} search space fits; the smallest has "
            f"{smallest:,} parameters (the budget must exceed it)"
        )
    return smallest
