"""One tracking path: a study's trial run, a `train` run and a `verify` run are logged by the same
sink, so they carry the same metric names, all from the one table in `tracking.names`."""

from __future__ import annotations

import re

import pytest

from mnist_search.cli import app
from mnist_search.tracking import names

from .conftest import local_client, runner, runs_of

pytestmark = pytest.mark.slow

# Names a several-seed run adds: each seed's own curves and scores, and the worst seed's score.
SEED_NAME = re.compile(r"^seed_\d+/(.+)$")


def _metric_names(client, run) -> set[str]:
    return set(client.get_run(run.info.run_id).data.metrics)


def _in_table(name: str) -> bool:
    inner = SEED_NAME.match(name)
    return (inner.group(1) if inner else name) in (*names.RUN_METRICS, names.VAL_WORST, names.RANK)


def test_trial_train_and_verify_runs_carry_the_same_metric_names_from_one_table(store, data_dir):
    common = ["--data-dir", str(data_dir), "--device", "cpu", "--limit-train", "1000"]
    study = runner.invoke(app, ["study", "--trials", "1", "--epochs", "3", "--replicas", "2", "--quiet",
                                *common])  # fmt: skip
    assert study.exit_code == 0, study.output
    train = runner.invoke(app, ["train", "seed-model-2", "--epochs", "3", *common])
    assert train.exit_code == 0, train.output
    verify = runner.invoke(app, ["verify", "--seeds", "1", "--epochs", "3", "--jobs", "1", *common])
    assert verify.exit_code == 0, verify.output

    client = local_client(store)
    (trial,) = runs_of(client, names.EXPERIMENTS["study"], "trial")
    (trained,) = runs_of(client, names.EXPERIMENTS["train"], "train")
    (verified,) = runs_of(client, names.EXPERIMENTS["verify"], "verify-run")
    per_kind = {kind: _metric_names(client, run) for kind, run in
                (("trial", trial), ("train", trained), ("verify", verified))}  # fmt: skip

    # Every run carries every name of the table, and nothing outside it; verify trains on all
    # 60,000 images, so it has no validation split and no validation figures.
    for kind, found in per_kind.items():
        assert set(names.RUN_METRICS) - set(names.VALIDATION_METRICS) <= found, kind
        assert {n for n in found if not _in_table(n)} == set(), kind
    # One seed per run (train, verify) logs exactly the table; the 2-seed trial adds its seeds'.
    assert per_kind["train"] == set(names.RUN_METRICS)
    assert per_kind["verify"] == set(names.RUN_METRICS) - set(names.VALIDATION_METRICS)
    seeds = {SEED_NAME.match(n).group(1) for n in per_kind["trial"] if SEED_NAME.match(n)}
    assert seeds == {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                     names.VAL_SCORE, names.TEST_MIN_LAST3}  # fmt: skip
    plain = {n for n in per_kind["trial"] if not SEED_NAME.match(n)}
    assert plain == set(names.RUN_METRICS) | {names.VAL_WORST, names.RANK}  # a trial's place in its study
    # The same outcome tags, and each run's figures are real: 3 epochs of val and test accuracy.
    for run, command in ((trial, "study"), (trained, "train"), (verified, "verify")):
        data = client.get_run(run.info.run_id).data
        # Its margin to the target, in points, on every kind of run (and on validation where it has one).
        metrics = data.metrics
        assert metrics[names.GAP_TEST] == pytest.approx(
            (metrics[names.TEST_MIN_LAST3] - 0.994) * 100, abs=1e-4
        )
        if names.VAL_SCORE in metrics:
            assert metrics[names.GAP_VAL] == pytest.approx((metrics[names.VAL_SCORE] - 0.994) * 100, abs=1e-4)
        assert data.tags[names.STATE] == "COMPLETE" and data.tags[names.TARGET_MET] in ("true", "false")
        assert data.tags["mlflow.source.name"] == f"mnist-search {command}"  # the runs table's Source
        history = client.get_metric_history(run.info.run_id, "test/acc")
        assert [m.step for m in history] == [1, 2, 3]
        accuracies = [m.value for m in history]
        # Learning: well above chance (0.1) by the last epoch, even on 1,000 training images.
        assert all(0.0 < a <= 1.0 for a in accuracies) and accuracies[-1] > 0.5, (
            data.tags[names.KIND],
            accuracies,
        )
        assert data.metrics[names.PARAMS] > 1_000
