"""What a user reads at a glance: the objective named in the study (optuna-dashboard's axis), the
target labelled in the study's plots."""

from __future__ import annotations

import optuna
import pytest

from mnist_search.core.config import ArchSpec, load_search, load_spec
from mnist_search.search.leaderboard import TrialRow
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import OBJECTIVE_NAME, open_study
from mnist_search.tracking import views
from mnist_search.tracking.plots import history, params_vs_accuracy

from .conftest import TINY, local_client, poll, start_cli


def test_a_new_study_names_its_objective_for_the_dashboard(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    exp = load_search(tmp_path / "tiny.yaml")
    storage = open_storage(str(tmp_path / "j.log"))
    study = open_study(storage, "s", exp, 8000, 2, 0, "tiny.yaml")
    assert study.metric_names == [OBJECTIVE_NAME]
    again = optuna.load_study(study_name="s", storage=open_storage(str(tmp_path / "j.log"), writable=False))
    assert again.metric_names == [OBJECTIVE_NAME] and OBJECTIVE_NAME.startswith("val_acc_last3")


def row(trial: int, params: int, val: float, test: float) -> TrialRow:
    return TrialRow(trial=trial, state="COMPLETE", params=params, mult_adds=None, val_acc=val,
                    test_acc_min_last3=test, target_met=test >= 0.994, epochs_run=15, seconds=1.0,
                    spec=None, mlflow_run_id=None, fail_reason=None, seeds=3, rank=trial + 1)  # fmt: skip


def test_the_plots_label_the_target_line():
    rows = [row(0, 6000, 0.9930, 0.9920), row(1, 7000, 0.9950, 0.9942)]
    for figure in (history(rows), params_vs_accuracy(rows, 8000)):
        labels = figure.axes[0].get_legend_handles_labels()[1]
        assert "target 99.4%" in labels, labels


@pytest.mark.slow
def test_best_follows_the_study_while_it_runs(tmp_path, data_dir):
    """Before the study's second trial ends, `@best` already points at its first completed one."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = start_cli(["study", "--experiment", "tiny.yaml", "--trials", "3", "--epochs", "3", "--limit-train",
                      "4000", "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--no-verify"],
                     tmp_path)  # fmt: skip
    store = tmp_path / "mlruns"

    def first_best():
        study = optuna.load_study(
            study_name="tiny-b8000", storage=open_storage(str(store / "optuna-journal.log"), writable=False)
        )
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(done) > 1 or proc.poll() is not None:
            return "late", None, None  # the second trial ended first: not seen mid-study
        if not done:
            return None
        version = local_client(store).get_model_version_by_alias("mnist-search-b8000", "best")
        return "mid-study", done[0], version

    when, trial, version = poll(first_best, "no @best while the study ran")
    assert when == "mid-study"
    assert version.run_id == trial.user_attrs["mlflow_run_id"] and version.tags["trial"] == str(trial.number)
    assert version.tags["all_seeds"] == "true"  # one seed per trial here (tiny's replicas: 1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_a_spec_reads_in_one_line_as_the_runs_table_shows_it():
    _, seed1 = load_spec("seed-model-1")
    assert seed1.outline() == "8,16,24 >8> 16,24 conv drop 0.1"
    spec = ArchSpec(
        stages=((7, 5, 4), (10, 6, 14)), transitions=(10,), padding=True, separable=True, pool="blur"
    )
    assert spec.outline() == "7,5,4 >10> 10,6,14 gap pad bn sep blur"


def test_the_study_view_filters_its_own_trials_and_its_link_keeps_the_local_hint():
    assert views.view_key("budget-8k-b8000") == "study-budget-8k-b8000"
    odd = views.view_key("it's a study/1")
    assert odd.startswith("study-it_s_a_study_1-") and odd != views.view_key("it_s a study/1")
    assert views.trials_filter("it's") == "tags.kind = 'trial' AND tags.study_name = \"it's\""
    state = views.study_view("s")
    assert state["searchFilter"] == "tags.kind = 'trial' AND tags.study_name = 's'"
    assert state["selectedColumns"][:3] == [
        "metrics.`rank`",
        "metrics.`params`",
        "metrics.`final/val_acc_last3`",
    ]
    assert views.with_view("", "study-s") == ""
    local = "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning (after: mlflow ui --backend-store-uri sqlite:///m.db)"
    assert views.with_view(local, "study-s") == (
        "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=study-s"
        " (after: mlflow ui --backend-store-uri sqlite:///m.db)"
    )
