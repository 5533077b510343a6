"""Seeds as fidelity: one seed first, the others only for contenders; the ranking rule; what a
staged study records in the study storage and in MLflow."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from mnist_search.cli import app
from mnist_search.search.fidelity import MARGIN, all_seeds, bar, contends, seeds_trained
from mnist_search.search.leaderboard import leaderboard
from mnist_search.search.records import TrialRecord
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import load_study
from tests.conftest import runner

RECIPE = {"replicas": 3, "epochs": 15}


def trial(value: float | None, seeds: list[int], state=TrialState.COMPLETE, **attrs):
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        intermediate_values={15: value} if value is not None else {},
        user_attrs={"feasible": True, "seeds": seeds, "recipe": RECIPE, "params": 6000, **attrs},
    )  # fmt: skip


def test_a_first_seed_contends_near_the_best_mean_of_seeds():
    means = [trial(0.9940, [0, 1, 2]), trial(0.9950, [3, 4, 5])]
    singles = [trial(0.9970, [6])]  # a one-seed score: not the bar, however high
    assert contends(0.9950 - MARGIN, means + singles)
    assert not contends(0.9950 - MARGIN - 0.0001, means + singles)
    assert seeds_trained(means[0]) == 3 and all_seeds(means[0])
    assert seeds_trained(singles[0]) == 1 and not all_seeds(singles[0])
    # Trials recorded before staged fidelity have no `seeds` when they never trained: their recipe's.
    old = create_trial(state=TrialState.COMPLETE, value=0.99, user_attrs={"recipe": RECIPE})
    assert seeds_trained(old) == 3 and all_seeds(old)


def test_the_first_to_finish_its_first_seed_sets_the_bar_and_a_contender_in_training_holds_it():
    assert contends(0.90, [])  # nothing to compare with: it contends, and its mean sets the bar
    training = trial(None, [0], state=TrialState.RUNNING, contender=True, first_score=0.9950)
    assert bar([training]) == 0.9950  # its other seeds still training: its first seed is the bar
    assert contends(0.9950 - MARGIN, [training]) and not contends(0.9930, [training])
    not_promoted = trial(None, [3], state=TrialState.RUNNING, contender=False, first_score=0.9990)
    pruned = trial(None, [6], state=TrialState.PRUNED)
    single = trial(0.9990, [9])  # a completed first seed that did not contend: not a mean
    assert bar([not_promoted, pruned, single]) is None


def test_a_one_seed_trial_never_outranks_a_mean_of_seeds(tmp_path):
    study = optuna.create_study(storage=open_storage(str(tmp_path / "j.log")), direction="maximize")
    study.add_trial(trial(0.9990, [0]))  # one lucky seed
    study.add_trial(trial(0.9930, [3, 4, 5]))  # a lower mean of 3 seeds
    study.add_trial(trial(0.9960, [6, 7, 8]))
    study.add_trial(trial(0.9995, [9]))
    study.add_trial(trial(None, [12], state=TrialState.PRUNED))
    rows = leaderboard(study)
    assert [(r.trial, r.seeds) for r in rows] == [(2, 3), (1, 3), (3, 1), (0, 1), (4, 1)]
    assert [r.rank for r in rows] == [1, 2, 3, 4, 0]  # a pruned trial has no rank
    # Optuna's own best is the raw value; the study's answer is ranked by the rule.
    assert study.best_trial.number == 3 and rows[0].trial == 2


STAGED = """\
search:
  stages: [[{low: 4, high: 8}, {low: 4, high: 8}], [{low: 4, high: 8}]]
  transitions: [{low: 4, high: 8}]
recipe: {epochs: 3, optimizer: adam, lr: 0.01, batch_size: 64, replicas: 3}
pruner: {kind: none}
"""


@pytest.mark.slow
def test_a_staged_study_trains_other_seeds_only_for_contenders(store, data_dir, tmp_path):
    (tmp_path / "staged.yaml").write_text(STAGED)
    result = runner.invoke(app, ["study", "--experiment", "staged.yaml", "--trials", "6", "--limit-train", "2000",
                                 "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--no-verify"])  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load_study(None, None)
    trained = [t for t in study.trials if TrialRecord.of(t).feasible and t.state != TrialState.RUNNING]
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    for t in sorted(trained, key=lambda t: t.number):
        rec = TrialRecord.of(t)
        run = client.get_run(rec.mlflow_run_id)
        assert run.data.tags["fidelity"] == "staged"
        assert t.state == TrialState.COMPLETE
        earlier = [o for o in study.trials if o.state == TrialState.COMPLETE and o.datetime_complete
                   and o.datetime_complete < t.datetime_complete]  # fmt: skip
        # The rule, as it stood when this trial's first seed ended (trials completed before it).
        assert rec.contender == contends(rec.first_score, earlier)
        if rec.contender:
            assert len(rec.seeds) == 3 and run.data.metrics["seeds_trained"] == 3
            per_seed = [run.data.metrics[f"seed_{s}/final/val_acc_last3"] for s in rec.seeds]
            assert t.value == pytest.approx(sum(per_seed) / 3)
            assert per_seed[0] == pytest.approx(rec.first_score)
            for s in rec.seeds:  # every seed's own curve, 3 epochs each
                assert len(client.get_metric_history(run.info.run_id, f"seed_{s}/val/acc")) == 3
        else:
            assert len(rec.seeds) == 1 and t.value == pytest.approx(rec.first_score)
            assert run.data.metrics["seeds_trained"] == 1
    first = min((t for t in trained if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    assert TrialRecord.of(first).contender  # the first to finish its first seed sets the bar


@pytest.mark.slow
def test_full_fidelity_is_one_option_away(store, data_dir, tmp_path):
    (tmp_path / "staged.yaml").write_text(STAGED)
    result = runner.invoke(app, ["study", "--experiment", "staged.yaml", "--trials", "2", "--limit-train", "1000",
                                 "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--no-verify",
                                 "--fidelity", "full"])  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load_study(None, None)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and all(len(TrialRecord.of(t).seeds) == 3 for t in done)
    assert all(TrialRecord.of(t).first_score is None for t in done)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_rung_is_recorded_as_pruned_with_its_one_seed(mnist):
    """Staged: a proposal losing its first rung stops there, one seed trained, recorded PRUNED
    (counted, never given its other seeds)."""
    import torch

    from mnist_search.core.config import load_experiment
    from mnist_search.core.data import MNISTData, Split
    from mnist_search.search.leaderboard import counts_toward_total
    from mnist_search.search.objective import Objective

    def part(s: Split, n: int) -> Split:
        return Split(s.x[:n], s.y[:n])

    data = MNISTData(part(mnist.train, 256), part(mnist.val, 128), part(mnist.test, 128))
    exp = load_experiment("budget-1k")
    recipe = exp.recipe.model_copy(update={"epochs": 4, "replicas": 3, "precise_bn": 0, "cycle_epochs": None})
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    for lr in (0.05, 0.1):  # budget-1k's smallest net (586 params), twice
        study.enqueue_trial({"s1c1": 2, "s1c2": 3, "s1c3": 3, "s2c1": 3, "s2c2": 3, "s2c3": 6, "t1": 3,
                             "lr": lr, "batch_size": 128})  # fmt: skip
    study.optimize(Objective(exp.search, recipe, 1000, data, torch.device("cpu"), seed=5), n_trials=2)
    trained = [t for t in study.trials if t.user_attrs.get("feasible")]
    assert len(trained) == 2
    for t in trained:
        rec = TrialRecord.of(t)
        assert t.state == TrialState.PRUNED and rec.fail_reason.startswith("pruned after epoch 1 ")
        assert rec.seeds == [(5 + t.number) * 3] and rec.epochs_run == 1  # its first seed only
        assert rec.contender is None and rec.first_score is None  # never judged for more seeds
        assert seeds_trained(t) == 1 and counts_toward_total(t)


def test_after_the_search_time_a_first_seed_no_longer_contends(mnist):
    """Trials still running when the study's search time ends finish, but their first seed earns no
    other seeds: those would hold the study's verify back by a contender's whole training."""
    import time

    import torch

    from mnist_search.core.config import load_experiment
    from mnist_search.core.data import MNISTData, Split
    from mnist_search.search.objective import Objective

    def part(s: Split, n: int) -> Split:
        return Split(s.x[:n], s.y[:n])

    data = MNISTData(part(mnist.train, 256), part(mnist.val, 128), part(mnist.test, 128))
    exp = load_experiment("budget-1k")
    recipe = exp.recipe.model_copy(update={"epochs": 1, "replicas": 3, "precise_bn": 0, "cycle_epochs": None})
    point = {
        "s1c1": 2,
        "s1c2": 3,
        "s1c3": 3,
        "s2c1": 3,
        "s2c2": 3,
        "s2c3": 6,
        "t1": 3,
        "lr": 0.1,
        "batch_size": 128,
    }
    for deadline, seeds in ((time.time() - 1, 1), (time.time() + 3600, 3)):
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(point)  # the first trial to finish its first seed: it would set the bar
        study.optimize(
            Objective(exp.search, recipe, 1000, data, torch.device("cpu"), seed=5, deadline=deadline),
            n_trials=1,
        )
        (t,) = study.trials
        rec = TrialRecord.of(t)
        assert t.state == TrialState.COMPLETE and seeds_trained(t) == seeds
        assert rec.contender is (seeds == 3) and 0.0 < rec.first_score <= 1.0
