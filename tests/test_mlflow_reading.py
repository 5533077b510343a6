"""What a user reads in MLflow, checked on a real `mlflow server` over HTTP: the experiment opens
on its runs; each trial run carries its knobs as numeric params, its size as metrics, true epochs
and seed, source/user tags and MNIST as a dataset input; the parent holds the search's definition
and links the best run; the registry's aliases (`best` from a study, `champion` from verify)
load with mlflow.pyfunc and predict raw [0, 1] pixels at the accuracy their run logged."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pytest
import yaml

from mnist_search.cli import app
from mnist_search.core.config import ArchSpec
from mnist_search.core.data import load_raw
from mnist_search.tracking import views

from .conftest import TINY, runner

pytestmark = pytest.mark.slow
BUDGET = 8000
NAME = f"mnist-search-b{BUDGET}"


@pytest.fixture(scope="module")
def served(mlflow_server, data_dir, tmp_path_factory):
    """A 2-trial tiny study and a 1-seed verify of its best trial, both on the server."""
    root = tmp_path_factory.mktemp("reading")
    (root / "tiny.yaml").write_text(TINY)
    common = ["--data-dir", str(data_dir), "--device", "cpu", "--tracking-uri", mlflow_server]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_SEARCH_STORE", str(root / "mlruns"))
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "reading-studies")  # honoured, as --experiment-name
        mp.chdir(root)
        study = runner.invoke(app, ["study", "--experiment", "tiny.yaml", "--trials", "2", "--epochs", "2",
                                    "--limit-train", "3000", "--quiet", *common])  # fmt: skip
        assert study.exit_code == 0, study.output
        mp.delenv("MLFLOW_EXPERIMENT_NAME")
        verify = runner.invoke(app, ["verify", "--study", "tiny-b8000", "--seeds", "1", "--epochs", "2",
                                     "--limit-train", "3000", "--experiment-name", "reading-verify", *common])  # fmt: skip
        assert verify.exit_code == 0, verify.output
    client = mlflow.MlflowClient(mlflow_server)
    client.printed = {"study": study.output, "verify": verify.output}  # what the commands printed
    return client


def runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    found = client.search_runs([exp.experiment_id])
    parent = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1
    return exp, parent[0], children


def test_the_experiments_open_on_their_runs_with_a_description(served):
    for name in ("reading-studies", "reading-verify"):
        exp = served.get_experiment_by_name(name)
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        assert exp.tags["mlflow.note.content"].startswith("mnist-search ")
    assert served.get_experiment_by_name("mnist-search-studies") is None  # the env var was honoured


def test_study_and_verify_end_by_printing_their_runs_table_link(served, mlflow_server):
    for command, experiment in (("study", "reading-studies"), ("verify", "reading-verify")):
        exp_id = served.get_experiment_by_name(experiment).experiment_id
        link = f"MLflow: {mlflow_server}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        link += f"&viewStateShareKey={views.view_key('tiny-b8000')}" if command == "study" else ""
        assert served.printed[command].rstrip().splitlines()[-1] == link


def test_every_trial_run_has_numeric_knobs_size_metrics_true_epochs_and_its_dataset(served, data_dir):
    _, _, children = runs(served, "reading-studies")
    assert len(children) == 2
    for run in children:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        knobs = {k: v for k, v in params.items() if k.startswith("knob.")}
        assert {"knob.s1c1", "knob.s1c2", "knob.s2c1", "knob.t1"} <= set(knobs)
        assert all(4 <= float(v) <= 8 for v in knobs.values())  # numbers MLflow can plot
        assert metrics["params"] == float(tags["params"]) and metrics["mult_adds"] == float(tags["mult_adds"])
        assert params["epochs"] == params["recipe.epochs"] == "2"
        assert params["seed"] == tags["trial_number"]  # seed 0 + trial number
        assert run.info.run_name == f"t{tags['trial_number']}-{tags['params']}p"
        assert tags["mlflow.source.name"] == "mnist-search study" and tags["mlflow.user"]
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "mnist" and len(dataset.dataset.digest) == 16
        assert yaml.safe_load(dataset.dataset.profile) == {"train": 3000, "val": 10000, "test": 10000}
        assert dataset.tags[0].value == "training"


def test_the_parent_defines_the_search_and_links_its_best_run(served):
    exp, parent, children = runs(served, "reading-studies")
    params = parent.data.params
    assert "search.stages" in params and "sampler" in params and params["pruner.kind"] == "none"
    assert params["budget"] == str(BUDGET)
    best = parent.data.tags["best_run_id"]
    assert best in {c.info.run_id for c in children}
    assert yaml.safe_load(parent.data.tags["best_spec"])["spec"]["stages"]  # YAML, not a Python repr
    assert f"#/experiments/{exp.experiment_id}/runs/{best}" in parent.data.tags["mlflow.note.content"]
    # PNGs only: MLflow's own chart view is the interactive one (`tracking.views`).
    logged = {a.path for a in served.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/params_vs_accuracy.png", "plots/optimization_history.png"} <= logged
    assert not any(path.endswith(".html") for path in logged)


def test_the_printed_link_opens_a_view_of_the_trials_best_first(served):
    """The study's link names a view the experiment holds: its filter finds exactly the study's
    trial runs, its order is their rank (1 = best, as `report` ranks them), its columns exist."""
    exp, parent, children = runs(served, "reading-studies")
    key = views.view_key("tiny-b8000")
    link = next(line for line in served.printed["study"].splitlines() if line.startswith("MLflow: "))
    assert f"viewStateShareKey={key}" in link and "workflowType=machine_learning" in link
    state = json.loads(served.get_experiment(exp.experiment_id).tags[views.SHARED_VIEW_TAG + key])
    assert state["orderByKey"] == "metrics.`rank`" and state["orderByAsc"] is True
    found = served.search_runs(
        [exp.experiment_id], filter_string=state["searchFilter"], order_by=["metrics.rank ASC"]
    )
    assert {r.info.run_id for r in found} == {c.info.run_id for c in children} and len(found) == 2
    ranks = [r.data.metrics.get("rank") for r in found]
    completed = [r for r in found if r.data.tags["state"] == "COMPLETE"]
    assert ranks[: len(completed)] == list(range(1, len(completed) + 1))
    assert found[0].info.run_id == parent.data.tags["best_run_id"]
    for column in state["selectedColumns"]:
        kind, name = column.split(".", 1)
        name = name.strip("`")
        holder = found[0].data.metrics if kind == "metrics" else found[0].data.tags
        assert name in holder, column
    best_spec = ArchSpec.model_validate(yaml.safe_load(parent.data.tags["best_spec"])["spec"])
    assert found[0].data.tags["arch"] == best_spec.outline()
    (scatter, *_) = state["compareRunCharts"]
    assert scatter["type"] == "SCATTER" and scatter["xaxis"]["key"] == "params"
    assert scatter["yaxis"]["key"] == "final/val_acc_last3"


def raw_test_set(data_dir):
    raw = load_raw(data_dir)
    return (raw["test_images"][:, None].astype(np.float32) / 255.0), raw["test_labels"]


def verified_version(client) -> str:
    _, parent, _ = runs(client, "reading-verify")
    return parent.data.tags["registered_version"]


@pytest.mark.parametrize("which", ["@best", "verified"])
def test_registered_models_load_and_predict_raw_pixels_at_the_logged_accuracy(served, which, data_dir):
    uri = f"models:/{NAME}@best" if which == "@best" else f"models:/{NAME}/{verified_version(served)}"
    version = served.get_model_version_by_alias(NAME, "best") if which == "@best" else (
        served.get_model_version(NAME, verified_version(served)))  # fmt: skip
    run = served.get_run(version.run_id)
    model = mlflow.pyfunc.load_model(uri)
    x, y = raw_test_set(data_dir)
    logits = np.concatenate([model.predict(x[i : i + 2000]) for i in range(0, len(x), 2000)])
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy == pytest.approx(run.data.metrics["final/test_acc"], abs=1e-4)
    assert accuracy > 0.3  # well above chance (0.1) after 2 epochs on 3,000 images: raw pixels understood
    # One input contract: a signature over (N, 1, 28, 28) float32, a real digit as the example.
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 28, 28)
    example = np.asarray(mlflow.models.Model.load(info.model_uri).load_input_example(info.model_uri))
    assert example.shape[1:] == (1, 28, 28) and 0.0 <= example.min() and example.max() <= 1.0
    assert example.max() > 0.9  # ink on it, not zeros


def test_a_smoke_verify_is_registered_with_its_table_and_protocol_but_never_as_champion(served):
    """1 seed, 2 epochs, 3,000 images: registered (its verify table, its protocol), and `@champion`
    stays for a verify of the full protocol that held the target (60,000 images, 15 epochs, 3 seeds)."""
    version = served.get_model_version(NAME, verified_version(served))
    assert "| trial | params | seed |" in version.description
    assert version.tags["target_held"] == "false" and float(version.tags["test_acc_mean"]) > 0.3
    assert version.tags["protocol"] == "3,000 images, 2 epochs, 1 seed (not the full protocol)"
    assert "champion" not in served.get_registered_model(NAME).aliases
    _, parent, _ = runs(served, "reading-verify")
    assert parent.data.tags["champion"] == "false"


def test_workers_registering_one_run_at_once_agree_on_one_version(served):
    """The check-then-create race of two workers finishing a study together: several threads
    register the same run at the same moment; one version remains and all of them return it."""
    from mnist_search.tracking.registry import register, registered_name

    _, _, children = runs(served, "reading-studies")
    run_id = children[0].info.run_id
    start = threading.Barrier(4)

    def one(_):
        start.wait()
        return register(served, run_id, 999, tags={"race": "yes"})

    with ThreadPoolExecutor(4) as pool:
        returned = list(pool.map(one, range(4)))
    remaining = served.search_model_versions(f"name='{registered_name(999)}' and run_id='{run_id}'")
    assert [v.version for v in remaining] == [returned[0]] and set(returned) == {returned[0]}
    assert register(served, run_id, 999, tags={}) == returned[0]  # and again later: the same one


def test_a_uid_without_a_passwd_entry_still_gets_a_user_tag(monkeypatch):
    """As in `docker run --user 1234`: getpass finds no name; the uid stands in, nothing fails."""
    import os
    import pwd

    from mnist_search.tracking.client import source_tags

    for key in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    assert source_tags("study")["mlflow.user"] == str(os.getuid())


def test_every_run_says_which_mnist_search_made_it(served):
    """The package's version on every run; its own commit, as this suite runs from a checkout
    (never the current directory's repository: the commands ran from a temporary folder)."""
    import subprocess
    from importlib.metadata import version

    from .conftest import REPO

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    every = []
    for experiment in ("reading-studies", "reading-verify"):
        _, parent, children = runs(served, experiment)
        every += [parent, *children]
    assert len(every) >= 5
    for run in every:
        assert run.data.tags["mnist_search_version"] == version("mnist-search")
        assert run.data.tags["git_commit"] == head == run.data.tags["mlflow.source.git.commit"]
