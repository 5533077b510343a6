"""Study plots for the parent MLflow run: optimisation history, params vs accuracy, importances."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure

from mnist_search.core.config import TARGET
from mnist_search.search.leaderboard import TrialRow, completed, leaderboard, pareto_front
from mnist_search.search.records import TrialRecord


def history(rows: list[TrialRow]) -> Figure:
    done = sorted((r for r in rows if r.val_acc is not None), key=lambda r: r.trial)
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        xs = [r.trial for r in done]
        ys = [r.val_acc for r in done]
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, s=18, label="val acc (mean of last 3 epochs)")
        ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.axhline(TARGET, color="grey", ls="--", lw=1, label=f"target {TARGET:.1%}")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history (completed, under-budget trials)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def params_vs_accuracy(rows: list[TrialRow], budget: int, budgets: tuple[int, ...] = ()) -> Figure:
    """Each completed trial's params against its scores, with the target and the budget (a
    front's every budget: `budgets`)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, color, label in (
        ("val_acc", "C0", "val acc"),
        ("test_acc_min_last3", "C2", "test acc (min of last 3)"),
    ):
        pts = [r for r in completed(rows) if getattr(r, key) is not None]
        ax.scatter([r.params for r in pts], [getattr(r, key) for r in pts], s=18, color=color, label=label)
        front = pareto_front(rows, key)
        ax.step([r.params for r in front], [getattr(r, key) for r in front], where="post", color=color, lw=1)
    ax.axhline(TARGET, color="grey", ls="--", lw=1, label=f"target {TARGET:.1%}")
    lines = budgets or (budget,)
    for i, b in enumerate(lines):
        label = (f"budget {b:,}" if len(lines) == 1 else "budgets") if not i else None
        ax.axvline(b, color="red", ls=":", lw=1, label=label)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("accuracy")
    ax.set_title("Parameters vs accuracy (lines: Pareto fronts)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def trained_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy holding the completed, under-budget (trained) trials only: over-budget
    proposals carry a placeholder value that must not enter importances or plots."""
    done = [t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
            if TrialRecord.of(t).feasible]  # fmt: skip
    trained = optuna.create_study(directions=study.directions, study_name=study.study_name)
    trained.add_trials(done)
    return trained


def importances(study: optuna.Study) -> Figure | None:
    """fANOVA-style importances over completed feasible trials; None when too few to say."""
    try:
        trained = trained_study(study)
        if len(trained.trials) < 3:
            return None
        # Optuna's default evaluator (PED-ANOVA) reads a study's direction, but ranks a `target`
        # as to be minimised: a front's validation score (its first objective) goes in negated.
        target = None if len(trained.directions) == 1 else (lambda t: -t.values[0])
        with warnings.catch_warnings():  # its note that a target is minimised: negated above
            warnings.simplefilter("ignore", UserWarning)
            scores = optuna.importance.get_param_importances(trained, target=target)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names])
    ax.set_xlabel("importance for validation accuracy")
    ax.set_title("Hyperparameter importances")
    fig.tight_layout()
    return fig


def study_figures(study: optuna.Study, budget: int, budgets: tuple[int, ...] = ()) -> dict[str, Figure]:
    rows = leaderboard(study)
    figs = {
        "plots/optimization_history.png": history(rows),
        "plots/params_vs_accuracy.png": params_vs_accuracy(rows, budget, budgets),
    }
    imp = importances(study)
    if imp is not None:
        figs["plots/param_importances.png"] = imp
    return figs
