"""A real, tiny study on real MNIST in a temporary local store, run once for this module: what it
stores, what it tracks in MLflow, `report`, `export`, and resuming it (last: it adds trials)."""

from __future__ import annotations

import json
import urllib.request

import optuna
import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import ConfigError, Recipe, load_experiment
from mnist_search.core.data import normalise
from mnist_search.core.model import build_model
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import OBJECTIVE_NAME
from mnist_search.training.teacher import check_teacher

from .conftest import (
    EXPERIMENTS,
    free_port,
    local_client,
    one_line_exit_2,
    runner,
    start_server_process,
    stop_server,
    store_with_default_study,
    study_args,
)

pytestmark = pytest.mark.slow
STUDY = "budget-8k-b8000"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """The default search, 4 trained trials of 1 epoch on 3,000 images, in a fresh local store."""
    with store_with_default_study(tmp_path_factory.mktemp("study"), data_dir, 4) as root:
        yield root


def load(root) -> optuna.Study:
    return optuna.load_study(
        study_name=STUDY, storage=open_storage(str(root / "mlruns" / "optuna-journal.log"))
    )


def runs(root):
    client = local_client(root / "mlruns")
    exp = client.get_experiment_by_name("mnist-search-studies")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("kind") == "study"]
    children = [r for r in all_runs if r.data.tags.get("kind") == "trial"]
    return client, parents, children


def test_only_under_budget_proposals_are_trained_and_tracked(trained):
    study = load(trained)
    done = [t for t in study.trials if t.user_attrs.get("feasible")]
    rejected = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    assert len(done) == 4
    assert all(t.user_attrs["params"] < 8000 for t in done)  # nothing over budget was trained
    assert all(t.user_attrs["params"] >= 8000 for t in rejected)
    assert all("mlflow_run_id" not in t.user_attrs for t in rejected)  # ... nor tracked
    assert all(0.0 < t.value <= 1.0 for t in done if t.state.name == "COMPLETE")


def test_optuna_dashboard_sees_feasibility_and_ranks_knobs_over_trained_trials_only(trained, tmp_path):
    """optuna-dashboard (a real server on the study's journal) shows each proposal's constraint,
    over-budget ones as infeasible and never as a completed trial scoring 0."""
    study = load(trained)
    rejected = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    assert rejected, "the default search proposes over-budget specs in its first trials"
    port = free_port()
    journal = trained / "mlruns" / "optuna-journal.log"
    proc = start_server_process(
        ["optuna-dashboard", str(journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        f"http://127.0.0.1:{port}/api/meta",
        tmp_path / "dashboard.log",
    )
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        (entry,) = [s for s in get_json(base)["study_summaries"] if s["study_name"] == STUDY]
        detail = get_json(f"{base}/{entry['study_id']}?after=0")
        shown = {t["number"]: t for t in detail["trials"]}
        importances = get_json(f"{base}/{entry['study_id']}/param_importances")["param_importances"]
    finally:
        stop_server(proc)
    # The objective by its name, and the parameter count a plottable axis (the dashboard's plots
    # offer numeric user attributes as targets: "sortable").
    assert detail["objective_names"] == [OBJECTIVE_NAME]
    assert {"key": "params", "sortable": True} in detail["union_user_attrs"]
    for t in study.trials:
        violation = t.user_attrs["params"] - (8000 - 1)
        assert shown[t.number]["constraints"] == [violation]  # > 0: infeasible
    for t in rejected:
        assert shown[t.number]["state"] == "Pruned" and shown[t.number].get("values") is None
        reason = {a["key"]: a["value"] for a in shown[t.number]["user_attrs"]}["fail_reason"]
        assert reason == f"over budget: {t.user_attrs['params']:,} >= 8,000 params, not trained"
    completed = [n for n, t in shown.items() if t["state"] == "Complete"]
    assert completed and all(study.trials[n].user_attrs["feasible"] for n in completed)
    assert all(0.0 < shown[n]["values"][0] <= 1.0 for n in completed)
    assert importances and {p["name"] for p in importances[0]} <= set(study.trials[completed[0]].params)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def test_one_parent_run_holds_a_closed_child_run_per_trained_trial(trained):
    client, parents, children = runs(trained)
    done = [t for t in load(trained).trials if t.user_attrs.get("feasible")]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {int(c.data.tags["trial_number"]) for c in children} == {t.number for t in done}
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")  # never left RUNNING
        assert child.data.tags["state"] in ("COMPLETE", "PRUNED")
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")] == [1]
        assert child.data.tags["study_name"] == STUDY
        assert child.data.params["recipe.epochs"] == "1"  # --epochs 1: one source, logged true
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/params_vs_accuracy.png"} <= artifacts
    metrics = parent.data.metrics
    over = sum(t.user_attrs.get("feasible") is False for t in load(trained).trials)
    assert metrics["study/trials_done"] == 4 and metrics["study/trials_over_budget"] == over
    assert (
        metrics["study/trials_trained"] + metrics["study/trials_pruned"] + metrics["study/trials_failed"] == 4
    )


def test_report_json_agrees_with_the_storage(trained):
    result = runner.invoke(
        app,
        ["report", "--study", STUDY, "--json", "--storage", str(trained / "mlruns" / "optuna-journal.log")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    study = load(trained)
    by_number = {t.number: t for t in study.trials}
    assert len(report["trials"]) == len([t for t in study.trials if t.user_attrs.get("feasible")])
    for row in report["trials"]:
        t = by_number[row["trial"]]
        assert row["params"] == t.user_attrs["params"] and row["state"] == t.state.name
        if t.state.name == "COMPLETE":
            assert row["val_acc"] == t.value
    assert report["feasible"] == len([t for t in study.trials if t.user_attrs.get("feasible")])
    best = max((r for r in report["trials"] if r["state"] == "COMPLETE"), key=lambda r: r["val_acc"])
    assert report["trials"][0]["trial"] == best["trial"]


def test_export_writes_a_program_over_raw_pixels_that_predicts_like_the_trained_net(trained, monkeypatch):
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(trained / "mlruns"))
    out = trained / "export"
    result = runner.invoke(app, ["export", "--study", STUDY, "--trial", "best", "--out", str(out)])
    assert result.exit_code == 0, result.output
    program = torch.export.load(out / "model.pt2")
    spec = load_experiment(out / "spec.yaml").spec
    net = build_model(spec)
    net.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    net.eval()
    pixels = torch.rand(7, 1, 28, 28)
    logits = program.module()(pixels)
    assert logits.shape == (7, 10)
    assert torch.allclose(logits, net(normalise(pixels)), atol=1e-4)
    assert "Total params" in (out / "layers.txt").read_text()
    # ... with the trial's recipe: it trained with the search's validation split held out, so it
    # may teach a search on that split (recipe.teacher), and not one that holds out more
    trained_with = load_experiment(out / "experiment.yaml").recipe
    assert trained_with.val_size == 10_000 and trained_with.epochs == 1
    check_teacher(Recipe(val_size=10_000, teacher=str(out)))
    with pytest.raises(ConfigError, match="trained on 2,000 of the 12,000 validation images"):
        check_teacher(Recipe(val_size=12_000, teacher=str(out)))


def test_resuming_with_another_budget_or_experiment_exits_2_and_adds_nothing(trained, data_dir, monkeypatch):
    """Another space's proposals would mix into the study (its ranking, its TPE model): the study
    name given with another experiment or budget is refused before anything is written. A study
    made by `study --budget 8000` (budget-8k) and resumed by path to the same file is the same."""
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(trained / "mlruns"))
    monkeypatch.chdir(trained)
    before = len(load(trained).trials), len(runs(trained)[2])
    args = study_args(data_dir, 6) + ["--study-name", STUDY]
    one_line_exit_2(
        runner.invoke(app, [*args, "--experiment", "budget-5k"]),
        f"--experiment budget-5k: study '{STUDY}' was created with experiment budget-8k;",
    )
    one_line_exit_2(
        runner.invoke(app, [*args[:2], "5000", *args[3:]]),
        f"--budget 5000: study '{STUDY}' was created with budget 8000;",
    )
    assert (len(load(trained).trials), len(runs(trained)[2])) == before
    assert len(runs(trained)[1]) == 1  # no second parent run
    by_path = runner.invoke(
        app, [*study_args(data_dir, 4), "--experiment", str(EXPERIMENTS / "budget-8k.yaml")]
    )
    assert by_path.exit_code == 0 and "already has 4 trials done" in by_path.output, by_path.output


def test_the_same_command_with_a_larger_total_resumes_under_the_same_parent(trained, data_dir, monkeypatch):
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(trained / "mlruns"))
    monkeypatch.chdir(trained)
    result = runner.invoke(app, study_args(data_dir, 6))
    assert result.exit_code == 0, result.output
    assert "4/6 trials done" in result.output and "6/6 trials done" in result.output
    _, parents, children = runs(trained)
    assert len(parents) == 1 and len(children) == 6
    again = runner.invoke(app, study_args(data_dir, 6))
    assert again.exit_code == 0 and "already has 6 trials done" in again.output
