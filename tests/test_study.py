"""The search's parts: sampling, the budget, the pruner, the sampler across workers, training slots,
and a study whose trials fail with a reason of their own."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import SearchSpace, load_experiment
from mnist_search.core.model import build_model, count_params
from mnist_search.search.leaderboard import trials_done
from mnist_search.search.objective import Objective
from mnist_search.search.space import check_budget, sample_recipe, sample_spec, smallest_spec
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import make_pruner, open_study
from mnist_search.workflows.study import TotalReached

from .conftest import EXPERIMENTS, local_client, one_line_exit_2, runner, runs_of, start_cli, study_args

BUDGET_8K = EXPERIMENTS / "budget-8k.yaml"


def test_sampling_is_separate_from_building_and_respects_the_space():
    space = load_experiment(BUDGET_8K).search
    fixed = {"s1c1": 8, "s1c2": 12, "s1c3": 16, "s2c1": 10, "s2c2": 12, "s2c3": 14, "t1": 8,
             "dropout": 0.02, "lr": 0.1}  # fmt: skip
    spec = sample_spec(optuna.trial.FixedTrial(fixed), space)
    assert spec.stages == ((8, 12, 16), (10, 12, 14)) and spec.transitions == (8,)
    assert spec.head == "gap" and spec.batchnorm and spec.dropout == 0.02
    assert count_params(spec) == sum(p.numel() for p in build_model(spec).parameters())


def test_separable_is_a_choice_of_the_space_and_a_trial_parameter_only_when_there_is_one():
    space = load_experiment("budget-1k-separable").search
    fixed = {"s1c1": 6, "s1c2": 8, "s1c3": 8, "s2c1": 8, "s2c2": 8, "s2c3": 12, "t1": 6, "lr": 0.1}
    spec = sample_spec(optuna.trial.FixedTrial(fixed), space)  # no "separable" parameter needed
    assert spec.separable and count_params(spec) == 966
    both = space.model_copy(update={"separable": (False, True)})
    plain = sample_spec(optuna.trial.FixedTrial(fixed | {"separable": False}), both)
    assert not plain.separable and count_params(plain) == 3_202  # the same widths as plain 3x3 convs: 3.3x
    with pytest.raises(ValueError, match="separable: needs at least one choice"):
        SearchSpace.model_validate(space.model_dump() | {"separable": []})


def test_recipe_knobs_are_drawn_from_the_space_and_the_rest_kept():
    experiment = load_experiment(BUDGET_8K)
    space, base = experiment.search, experiment.recipe
    assert space.batch_size == (64, 128)
    recipe = sample_recipe(optuna.trial.FixedTrial({"lr": 0.05, "batch_size": 64}), space, base)
    assert (recipe.lr, recipe.batch_size) == (0.05, 64)
    assert recipe.model_dump(exclude={"lr", "batch_size"}) == base.model_dump(exclude={"lr", "batch_size"})
    with pytest.raises(ValueError, match=r"not in \(64, 128\)"):  # optuna checks a categorical
        sample_recipe(optuna.trial.FixedTrial({"lr": 0.05, "batch_size": 100}), space, base)


def test_impossible_budget_is_rejected_with_the_smallest_size():
    space = load_experiment(BUDGET_8K).search
    _, smallest = smallest_spec(space)
    with pytest.raises(ValueError, match=f"smallest has {smallest:,} parameters"):
        check_budget(space, smallest)
    assert check_budget(space, smallest + 1) == smallest


def test_median_pruner_waits_for_three_trained_trials_not_for_rejected_proposals():
    """Over-budget proposals are COMPLETE trials without epochs: they must not start the pruner."""
    exp = load_experiment(EXPERIMENTS / "budget-8k.yaml")
    warmup = exp.pruner.warmup_epochs
    study = optuna.create_study(direction="maximize", pruner=make_pruner(exp, epochs=15))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for _ in range(5):  # rejected proposals: complete, value 0, nothing reported
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=0.0))

    def trained(acc: float) -> optuna.trial.FrozenTrial:
        curve = {epoch: acc for epoch in range(1, 16)}
        return optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, value=acc, intermediate_values=curve
        )

    def pruned_at(epoch: int, acc: float) -> bool:
        trial = study.ask()
        trial.report(acc, step=epoch)
        verdict = trial.should_prune()
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return verdict

    study.add_trial(trained(0.99))
    assert not pruned_at(warmup, 0.5)  # one trained trial is no median
    study.add_trial(trained(0.99))
    study.add_trial(trained(0.99))
    assert not pruned_at(warmup - 1, 0.5)  # three trained, but still in the warm-up epochs
    assert pruned_at(warmup, 0.5)  # three trained, past the warm-up: below the median
    assert not pruned_at(warmup, 0.995)


def _running(study: optuna.Study, **attrs) -> optuna.Trial:
    trial = study.ask()
    for key, value in {"feasible": True, **attrs}.items():
        trial.set_user_attr(key, value)
    return trial


def _ask_slot(total: TotalReached, study: optuna.Study, number: int, wait: float) -> list[str]:
    """The slot's answer within `wait` seconds; [] while it is still waiting (a daemon thread,
    so a regression shows as a failed assertion, not a hung suite)."""
    answer: list[str] = []
    asker = threading.Thread(target=lambda: answer.append(total.slot(study, number)), daemon=True)
    asker.start()
    asker.join(timeout=wait)
    return answer


def test_workers_with_the_same_seed_propose_different_architectures(tmp_path):
    """`--jobs 2` starts two workers with the same --seed on one study. Each proposal must depend
    on the trial number, or both workers draw the same random start-up architectures."""
    exp = load_experiment(BUDGET_8K)

    def proposals(path, workers):
        studies = [open_study(open_storage(str(path)), "s", exp, 8000, 1, 0, "x") for _ in range(workers)]
        specs = []
        for i in range(6):  # the workers ask in turn, as two processes would
            trial = studies[i % workers].ask()
            specs.append((trial.number, sample_spec(trial, exp.search)))
        return specs

    shared = proposals(tmp_path / "shared.log", workers=2)
    assert [n for n, _ in shared] == list(range(6))
    assert len({spec for _, spec in shared}) == 6  # before the fix: trials 3-5 repeated 0-2
    assert proposals(tmp_path / "alone.log", workers=1) == shared  # reproducible by trial number


def test_trials_waiting_for_the_last_slots_never_wait_on_each_other():
    """The end of a shared study: one trained trial of 3, three workers asking at once. Each
    waiting trial used to count the others as running, so all three waited for ever (CI hang).
    Trials claim slots in number order instead."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"feasible": True}))
    first, second, third = (_running(study) for _ in range(3))
    study.ask().set_user_attr("feasible", False)  # an over-budget proposal claims nothing
    total = TotalReached(3, heartbeats=True, poll_seconds=0.01)
    assert _ask_slot(total, study, first.number, wait=5) == ["train"]
    assert _ask_slot(total, study, second.number, wait=5) == ["train"]
    second.set_user_attr("training", True)

    answer = _ask_slot(total, study, third.number, wait=0.2)
    assert answer == []  # 1 done + 2 ahead of it: it waits in case one of them dies
    first.set_user_attr("fail_reason", "interrupted")  # does not count: its slot is free again
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    deadline = time.monotonic() + 5
    while not answer and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answer == ["train"]

    # Without heartbeats (journal storage) nobody waits: the trial behind a full house stops,
    # and a lower-numbered trial is never held back by a higher one that has not started training.
    journal = TotalReached(3, heartbeats=False)
    third.set_user_attr("training", True)
    late = _running(study)
    assert journal.slot(study, late.number) == "stop"  # 1 done + second + third training
    study.tell(second, 0.95)
    assert journal.slot(study, late.number) == "stop"  # 2 done + third training
    study.tell(third, state=optuna.trial.TrialState.FAIL)  # no reason: a killed worker's trial
    assert journal.slot(study, late.number) == "train"


def test_a_retried_trial_is_not_training_when_it_asks_for_a_slot():
    """A dead worker's trial is re-queued with its user attributes, "training" included; asking
    for a slot with it set, it would be ahead of the lower trials it waits on (a circular wait)."""
    exp = load_experiment(BUDGET_8K)
    seen = []

    def slot(study, number):
        seen.append(dict(study.trials[number].user_attrs))
        return "stop"

    objective = Objective(exp.search, exp.recipe, 8000, None, torch.device("cpu"), slot=slot)
    study = optuna.create_study(direction="maximize")
    smallest = {
        f"s{i}c{j}": r.low for i, stage in enumerate(exp.search.stages, 1) for j, r in enumerate(stage, 1)
    }
    smallest |= {f"t{i}": r.low for i, r in enumerate(exp.search.transitions, 1)}
    study.enqueue_trial(smallest, user_attrs={"training": True, "feasible": True})  # as retried
    study.optimize(objective, n_trials=1)
    assert len(seen) == 1 and seen[0]["feasible"] is True and seen[0]["training"] is False
    assert study.trials[0].user_attrs["surplus"] is True  # "stop": not trained, not counted


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--budget 50: no architecture in budget-1k-separable's search space fits; the smallest has 496"),
        (["--experiment", "budget-8k"], "in budget-8k's search space fits; the smallest has 2,700"),
    ],
)
def test_budget_50_exits_2_before_anything_is_written(store, data_dir, extra, message):
    result = runner.invoke(app, ["study", "--budget", "50", "--data-dir", str(data_dir), *extra])
    assert result.exit_code == 2
    assert message in result.stderr  # the search sized for the budget (budget-1k), or the one given
    assert len(result.stderr.strip().splitlines()) == 1
    assert not store.exists()


def test_non_finite_loss_fails_the_trial_with_its_reason_and_the_study_goes_on(store, data_dir, tmp_path):
    exp = tmp_path / "explode.yaml"
    exp.write_text(
        "search:\n"
        "  stages: [[{low: 4, high: 8}], [{low: 4, high: 8}]]\n"
        "  transitions: [{low: 4, high: 8}]\n"
        "  batchnorm: [false]\n"
        "recipe: {lr: 1.0e+12, momentum: 0.9, epochs: 1}\n"
    )
    args = ["study", "--budget", "8000", "--experiment", str(exp), "--trials", "2", "--limit-train", "500",
            "--data-dir", str(data_dir), "--device", "cpu", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # both ran: a study that completes no trial is not a success
    assert "no trial completed: 2 failed (first: trial " in result.stderr.strip().splitlines()[-1]
    study = optuna.load_study(study_name="explode-b8000", storage=open_storage(None))
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 2
    assert all("training loss became" in t.user_attrs["fail_reason"] for t in failed)
    children = runs_of(local_client(store), "mnist-search-studies", "trial")
    assert len(children) == 2
    assert all(
        c.info.status == "FAILED" and "training loss became" in c.data.tags["failure"] for c in children
    )
    # A diverging learning rate is each trial's own outcome, not a broken setup: 4 failed trials
    # in a row do not stop the study (only the same *error* repeated does; see test_trust).
    result = runner.invoke(app, [*args[:6], "4", *args[7:]])
    assert result.exit_code == 1 and "4/4 trials done" in result.output, result.output  # still none completed
    study = optuna.load_study(study_name="explode-b8000", storage=open_storage(None))
    assert [t.state.name for t in study.trials if t.user_attrs.get("feasible")] == ["FAIL"] * 4


def test_each_budget_gets_the_shipped_search_sized_for_it():
    """`study --budget N` without --experiment searches the shipped space of the smallest size at
    least as large, in the family that verified best at that size (separable up to 5,000); every
    shipped one has architectures under its own budget, and over it."""
    from mnist_search.core.config import default_search
    from mnist_search.workflows.study import StudyRequest

    picks = {b: default_search(b) for b in (500, 1000, 1001, 2000, 3000, 4000, 5000, 7999, 8000, 20000)}
    assert picks == {500: "budget-1k-separable", 1000: "budget-1k-separable", 1001: "budget-2k-separable",
                     2000: "budget-2k-separable", 3000: "budget-3k-separable", 4000: "budget-5k-separable",
                     5000: "budget-5k-separable", 7999: "budget-8k", 8000: "budget-8k", 20000: "budget-8k"}  # fmt: skip
    assert StudyRequest(budget=1000).experiment == "budget-1k-separable"
    assert StudyRequest(budget=1000, experiment="budget-8k").experiment == "budget-8k"  # as given
    assert (
        StudyRequest.model_validate_json(StudyRequest(budget=3000).model_dump_json()).experiment
        == "budget-3k-separable"
    )
    for name, size in [("budget-1k", 1), ("budget-1k-separable", 1), ("budget-2k", 2), ("budget-2k-separable", 2),
                       ("budget-3k", 3), ("budget-3k-separable", 3), ("budget-5k", 5), ("budget-5k-separable", 5),
                       ("budget-8k", 8), ("budget-8k-separable", 8)]:  # fmt: skip
        space = load_experiment(name).search
        _, smallest = smallest_spec(space)
        largest = count_params(
            smallest_spec(space)[0].model_copy(
                update={
                    "stages": tuple(tuple(r.high for r in stage) for stage in space.stages),
                    "transitions": tuple(r.high for r in space.transitions),
                }
            )
        )
        assert smallest < size * 1000 < largest, (name, smallest, largest)
    assert smallest_spec(load_experiment("budget-1k").search)[1] == 586
    for name, fewest in [("budget-1k-separable", 496), ("budget-2k-separable", 966),
                         ("budget-3k-separable", 1_330), ("budget-5k-separable", 1_992),
                         ("budget-8k-separable", 3_716)]:  # fmt: skip
        separable, smallest = smallest_spec(load_experiment(name).search)
        assert separable.separable and smallest == fewest


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize("epochs, state, epochs_run", [(4, "PRUNED", 1), (3, "COMPLETE", 3)])
def test_a_trial_is_never_pruned_in_the_epochs_it_is_scored_on(mnist, epochs, state, epochs_run):
    """The objective is the mean of the last 3 epochs: a pruner that would prune at every epoch
    stops a 4-epoch trial after epoch 1, and lets a 3-epoch one finish (on the GPU a trial was
    pruned after its 15th and last epoch, its cost spent for nothing)."""
    from mnist_search.core.data import MNISTData, Split

    def part(s: Split, n: int) -> Split:
        return Split(s.x[:n], s.y[:n])

    data = MNISTData(part(mnist.train, 256), part(mnist.val, 128), part(mnist.test, 128))
    space = load_experiment("budget-1k").search
    recipe = load_experiment("budget-1k").recipe.model_copy(
        update={"epochs": epochs, "replicas": 1, "precise_bn": 0, "cycle_epochs": None}
    )
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.enqueue_trial({"s1c1": 2, "s1c2": 3, "s1c3": 3, "s2c1": 3, "s2c2": 3, "s2c3": 6, "t1": 3,
                         "lr": 0.05, "batch_size": 128})  # fmt: skip
    study.optimize(Objective(space, recipe, 1000, data, torch.device("cpu")), n_trials=1)
    (trial,) = study.trials
    assert trial.state.name == state and trial.user_attrs["epochs_run"] == epochs_run
    assert trial.user_attrs["params"] == 586  # budget-1k's smallest net


@pytest.mark.slow
def test_two_workers_ending_at_the_timeout_exit_0_with_one_summary(tmp_path, data_dir):
    """`--jobs 2 --timeout`: each worker used to print its own summary (the first while the other
    still trained) and the command exited 1 although nothing failed."""
    args = study_args(data_dir, 100) + ["--jobs", "2", "--timeout", "3"]
    proc = start_cli(args, tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out, err)
    assert err.strip() == ""
    study = optuna.load_study(
        study_name="budget-8k-b8000", storage=open_storage(str(tmp_path / "mlruns" / "optuna-journal.log"))
    )
    done = trials_done(study)
    assert 2 <= done < 100
    assert out.count("trials done") == 3  # the header, the workers' count line, the study's summary
    assert f"study budget-8k-b8000: {done}/100 trials done by 2 workers" in out
    assert out.count("MLflow: ") == 2  # under the header, and after the summary


def test_the_resume_summary_counts_what_a_study_holds_by_kind(tmp_path):
    from optuna.trial import TrialState, create_trial

    from mnist_search.search.leaderboard import resume_summary

    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "j.log")))
    assert resume_summary(study) == ""  # a new study: nothing to resume
    study.enqueue_trial(params={})  # ... nor once its start point is queued (`search.start`: WAITING)
    assert resume_summary(study) == ""
    for state, attrs in [
        (TrialState.COMPLETE, {"feasible": True}),
        (TrialState.PRUNED, {"feasible": True}),
        (TrialState.FAIL, {"feasible": True, "fail_reason": "ValueError: loss is nan"}),  # its own: counts
        (TrialState.FAIL, {"feasible": True, "fail_reason": "interrupted"}),  # Ctrl-C: replaced
        (TrialState.FAIL, {"feasible": True, "fail_reason": "worker died (pid 7 on h)"}),  # retried
        (TrialState.PRUNED, {"feasible": False}),  # over budget, never trained
    ]:
        value = 0.98 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, user_attrs=attrs))
    assert resume_summary(study) == (
        "resuming 6 trials (3 done: 1 trained, 1 pruned, 1 failed; 2 interrupted and trained again, 1 over budget)"
    )


@pytest.mark.slow
def test_the_header_says_when_a_run_resumes_a_study(store, data_dir, tmp_path):
    from .conftest import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["study", "--experiment", "tiny.yaml", "--epochs", "1", "--limit-train", "500", "--quiet",
            "--data-dir", str(data_dir), "--device", "cpu"]  # fmt: skip
    first = runner.invoke(app, [*args, "--trials", "1"])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("study tiny-b8000: 0/1 trials done; on cpu; storage "), first.stdout
    again = runner.invoke(app, [*args, "--trials", "2"])
    assert again.exit_code == 0, again.output
    header = again.stdout.splitlines()[0]
    assert header.startswith(
        "study tiny-b8000: resuming 1 trial (1 done: 1 trained, 0 pruned, 0 failed; 0 interrupted and trained again, "
        "0 over budget); 1/2 trials done; on cpu; storage "
    ), header
    assert "2/2 trials done" in again.stdout


def test_a_new_study_tries_the_spaces_start_points_first_and_only_once(tmp_path):
    """`search.start`: queued when the study is created (by each of two workers opening it at
    once: queued once), asked before anything is sampled, never queued again on resume."""
    exp = load_experiment(BUDGET_8K)
    point = {"s1c1": 8, "s1c2": 12, "s1c3": 16, "s2c1": 12, "s2c2": 16, "s2c3": 16, "t1": 10,
             "dropout": 0.02, "batch_size": 64, "lr": 0.1}  # fmt: skip
    started = exp.model_copy(update={"search": exp.search.model_copy(update={"start": (point,)})})
    path = str(tmp_path / "j.log")
    first, second = (open_study(open_storage(path), "s", started, 8000, 1, 0, "x") for _ in range(2))
    trial = first.ask()
    spec = sample_spec(trial, started.search)
    assert trial.number == 0 and spec.stages == ((8, 12, 16), (12, 16, 16)) and spec.transitions == (10,)
    assert sample_recipe(trial, started.search, started.recipe).batch_size == 64 and trial.params == point
    first.tell(trial, 0.99)
    again = open_study(open_storage(path), "s", started, 8000, 1, 0, "x")
    nxt = again.ask()
    sample_spec(nxt, started.search)
    assert nxt.number == 1 and nxt.params != point  # sampled: the start point was queued once
    assert len(second.trials) == 2


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"s1c1": 9}, "search: start[0].s1c1: 9 is outside the search's s1c1 (4 to 16 step 2)"),
        ({"s1c1": 8.5}, "search: start[0].s1c1: 8.5 is not a whole number"),
        (
            {"batch_size": 32},
            "search: start[0].batch_size: 32 is outside the search's batch_size (one of 64, 128)",
        ),
        ({"width": 8}, "search: start[0].width: not a parameter of this search (s1c1, s1c2,"),
    ],
)
def test_a_start_point_outside_the_space_exits_2_naming_it(store, data_dir, tmp_path, point, message):
    flow = ", ".join(f"{k}: {v}" for k, v in point.items())
    (tmp_path / "s.yaml").write_text(f"extends: budget-8k\nsearch:\n  start: [{{{flow}}}]\n")
    result = runner.invoke(
        app, ["study", "--experiment", str(tmp_path / "s.yaml"), "--data-dir", str(data_dir)]
    )
    one_line_exit_2(result, message)
    assert not store.exists()
