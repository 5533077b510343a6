"""Every name a run is logged under in MLflow, in one table: metrics, the tags runs are found by,
and the experiments each command writes to. A trial's run, a `train` run and a `verify` run of one
seed carry the same names (`RUN_METRICS`); a run of several seeds adds each seed's own under
`seed_<s>/...` and the worst seed's score."""

from __future__ import annotations

import math

from mnist_search.core.results import EpochResult

# MLflow experiments, by the command that writes to them (each can be renamed with --experiment-name).
EXPERIMENTS = {
    "train": "mnist-search-train",
    "study": "mnist-search-studies",
    "verify": "mnist-search-verify",
}

# Per epoch (step = the epoch, 1-based): EpochResult's fields under MLflow-style names.
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "lr": "lr",  # the learning rate at the end of the epoch
    "epoch_seconds": "epoch_seconds",
}
# The splits each seed of a several-seed run logs under seed_<s>/ (the rate and time are the pack's).
SEED_SPLITS = ("train", "val", "test")

# Once per run, when it ends.
PARAMS = "params"  # also a metric: MLflow's scatter and parallel-coordinates plots offer metrics
MULT_ADDS = "mult_adds"
VAL_SCORE = "final/val_acc_last3"  # the mean validation accuracy of the last 3 epochs: the objective
TEST_MIN_LAST3 = "final/test_acc_min_last3"  # the target is judged on it (>= 99.4 % in each of the last 3)
TEST_LAST = "final/test_acc"
SECONDS = "final/seconds"  # wall time of the run's training
VAL_WORST = "final/val_acc_last3_worst"  # several seeds: the worst seed's score
SEEDS_TRAINED = "seeds_trained"  # how many seeds its final figures are over (a trial's fidelity)
# The margin to the target, in points (99.52 % against 99.4 %: +0.12): the test figure it is
# judged on, and the validation score's equivalent (what the search ranks by).
GAP_TEST = "final/gap_test_pts"
GAP_VAL = "final/gap_val_pts"
# A study's trial: its place among the completed trials (1 = best), rewritten as better ones come.
RANK = "rank"

RUN_METRICS = (
    *EPOCH_METRICS.values(), PARAMS, MULT_ADDS, VAL_SCORE, TEST_MIN_LAST3, TEST_LAST, SECONDS, SEEDS_TRAINED,
    GAP_TEST, GAP_VAL,
)  # fmt: skip
# Absent from runs trained without a validation split (`verify`: all 60,000 training images).
VALIDATION_METRICS = ("val/loss", "val/acc", VAL_SCORE, GAP_VAL)

# Tags every trained run carries.
KIND = "kind"  # train / trial / verify-seed / study / verify
STATE = "state"  # COMPLETE / PRUNED / FAIL (RUNNING while it trains)
FAILURE = "failure"  # why a FAIL failed
PRUNED_REASON = "pruned_reason"
TARGET_MET = "target_met"
PACK_LAYOUT = "pack_layout"
MODEL_SEED = "model_seed"  # several seeds: the seed whose model the run hands out
FIDELITY = "fidelity"  # a trial's: staged (one seed first, the others if it contends) or full
BAND = "band"  # a front's trial: the budget of its size band (search.bands)

# Optuna's trial states, as the MLflow run's status.
END_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def seed_metric(seed: int, name: str) -> str:
    return f"seed_{seed}/{name}"


def epoch_metrics(r: EpochResult) -> dict[str, float]:
    """One epoch's figures by their names (the val/* ones absent when there is no val split)."""
    values = {name: getattr(r, field) for field, name in EPOCH_METRICS.items()}
    return {k: v for k, v in values.items() if math.isfinite(v)}
