"""`verify` on a real, tiny study (two trained trials, made once for this module): runs here and in
worker processes, named trials, another recipe, and the files it writes."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import ArchSpec, load_experiment
from mnist_search.core.data import load_mnist
from mnist_search.core.model import build_model, count_params
from mnist_search.search.storage import open_storage
from mnist_search.training.train import evaluate
from mnist_search.workflows.runtime import available_cores

from .conftest import local_client, runner, runs_of, store_with_default_study

pytestmark = pytest.mark.slow
STUDY = "budget-8k-b8000"
VERIFY = "mnist-search-verify"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    with store_with_default_study(tmp_path_factory.mktemp("verify"), data_dir, 2) as root:
        yield root


def verify_args(data_dir, *extra):
    return ["verify", "--study", STUDY, "--epochs", "1", "--limit-train", "1000", "--data-dir", str(data_dir),
            "--device", "cpu", *extra]  # fmt: skip


def new_parent(client, before: set[str]):
    (parent,) = [r for r in runs_of(client, VERIFY, "verify") if r.info.run_id not in before]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent, children


def parent_ids(client) -> set[str]:
    return {r.info.run_id for r in runs_of(client, VERIFY, "verify")}


def test_verify_retrains_the_best_architecture_over_seeds(trained, data_dir):
    out = trained / "verified"
    client = local_client(trained / "mlruns")
    before = parent_ids(client)
    result = runner.invoke(
        app, verify_args(data_dir, "--top", "1", "--seeds", "2", "--out", str(out), "--jobs", "1")
    )
    assert result.exit_code == 0, result.output
    assert "mean ± std" in result.output and "wall time" in result.output
    _, children = new_parent(client, before)
    assert len(children) == 2
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    # One pack: both seeds trained side by side, so each epoch took the same (the pack's) time.
    assert children[0].data.metrics["epoch_seconds"] == children[1].data.metrics["epoch_seconds"]
    assert children[0].data.metrics["test/acc"] != children[1].data.metrics["test/acc"]  # two seeds
    # ... laid out as measured on this machine (layout.py), the same for both, on each run:
    assert (
        children[0].data.tags["pack_layout"]
        == children[1].data.tags["pack_layout"]
        in ("grouped", "separate")
    )
    for c in children:  # all 60k images minus nothing held out: no val metrics, test per epoch
        assert c.data.params["recipe.val_size"] == "0"
        assert len(client.get_metric_history(c.info.run_id, "test/acc")) == 1
    assert {"model.pt2", "state_dict.pt", "spec.yaml", "verify.md", "experiment.yaml"} <= {
        p.name for p in out.iterdir()
    }
    assert load_experiment(out / "experiment.yaml").recipe.val_size == 0
    assert "| mean ± std |" in (out / "verify.md").read_text()

    # verify.json: the same figures for programs (`frontier`), each seed's curve, the search behind
    record = json.loads((out / "verify.json").read_text())
    (cand,) = record["candidates"]
    assert record["budget"] == 8000 and record["device"] == "cpu" and record["study"] == STUDY
    assert record["exported"]["trial"] == cand["trial"] and cand["params"] == count_params(
        ArchSpec.model_validate(cand["spec"])
    )
    by_seed = {c.data.params["seed"]: c for c in children}
    for seed in cand["seeds"]:
        run = by_seed[str(seed["seed"])]
        assert seed["mlflow_run_id"] == run.info.run_id
        assert seed["test_acc"] == [run.data.metrics["test/acc"]] == [seed["min_last3"]]  # 1 epoch
        assert (
            f"| {cand['trial']} | {cand['params']:,} | {seed['seed']} | {seed['test_acc'][0]:.4f} |"
            in (out / "verify.md").read_text()
        )
    search = record["search"]
    assert search["study"] == STUDY and search["trained"] == 2 and search["devices"] == ["cpu"]
    # As the study recorded it, with the experiment the budget chose written out:
    assert search["command"].startswith("mnist-search study --budget 8000 --trials 2")
    assert search["command"].endswith(" --experiment budget-8k")
    assert search["trial_seconds"] > 0 and search["proposals"] >= 2


def test_verify_jobs_2_trains_the_seeds_in_two_worker_processes(trained, data_dir):
    out = trained / "verified-jobs"
    client = local_client(trained / "mlruns")
    before = parent_ids(client)
    result = runner.invoke(app, verify_args(data_dir, "--seeds", "2", "--out", str(out), "--jobs", "2"))
    assert result.exit_code == 0, result.output
    assert (
        f"2 packs of seeds in 2 worker processes, torch threads each: {max(1, available_cores() // 2)}"
        in result.output
    )
    table = (out / "verify.md").read_text()
    assert re.search(r"\| 0 \| [\d.]+ \| [\d.]+ \| \w+ \|\n\| \d+ \| [\d,]+ \| 1 \|", table), (
        table
    )  # seed order
    _, children = new_parent(client, before)
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" and c.data.metrics["test/acc"] > 0.5 for c in children)
    # The weights came back from a worker intact: the exported seed scores what its run logged.
    seed = int(re.search(r"Exported weights: seed (\d+)", table)[1])
    model = build_model(load_experiment(out / "spec.yaml").spec)
    model.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    _, acc = evaluate(model, load_mnist(data_dir).test)
    logged = next(c for c in children if c.data.params["seed"] == str(seed)).data.metrics["test/acc"]
    assert acc == pytest.approx(logged, abs=1e-9)


def ranked_trials() -> list[int]:
    rows = json.loads(runner.invoke(app, ["report", "--json"]).output)["trials"]
    return [r["trial"] for r in rows if r["state"] == "COMPLETE"]


def test_verify_trial_picks_a_named_trial_and_an_unknown_one_exits_2(trained, data_dir):
    ranked = ranked_trials()
    assert len(ranked) == 2
    bad = runner.invoke(app, ["verify", "--trial", "999", "--data-dir", str(data_dir)])
    assert bad.exit_code == 2 and "--trial 999: not a completed" in bad.output
    result = runner.invoke(app, verify_args(data_dir, "--trial", str(ranked[-1]), "--seeds", "1"))
    assert result.exit_code == 0, result.output
    assert f"trial {ranked[-1]} seed 0:" in result.output and f"trial {ranked[0]} seed" not in result.output


def test_verify_first_seed_trains_those_seeds_as_a_verify_from_seed_0_trained_them(
    trained, data_dir, monkeypatch
):
    """--first-seed 1 --seeds 1: seed 1 alone, the run a verify of seeds 0 and 1 trained for
    seed 1 (the same test accuracy to the last image); a verified point checked on fresh seeds."""
    monkeypatch.setenv("MNIST_SEARCH_PACK", "separate")  # replicas train exactly as alone (test_packed)
    trial = ranked_trials()[0]
    client = local_client(trained / "mlruns")
    before = parent_ids(client)
    both = runner.invoke(app, verify_args(data_dir, "--trial", str(trial), "--seeds", "2", "--jobs", "1"))
    assert both.exit_code == 0, both.output
    _, children = new_parent(client, before)
    acc = {c.data.params["seed"]: c.data.metrics["test/acc"] for c in children}
    assert sorted(acc) == ["0", "1"] and acc["0"] != acc["1"]

    before = parent_ids(client)
    args = verify_args(data_dir, "--trial", str(trial), "--first-seed", "1", "--seeds", "1", "--jobs", "1")
    later = runner.invoke(app, args)
    assert later.exit_code == 0, later.output
    _, (run,) = new_parent(client, before)
    assert run.data.params["seed"] == "1" and run.info.run_name == f"verify-trial-{trial}-seed-1"
    assert run.data.metrics["test/acc"] == acc["1"]
    assert f"trial {trial} seed 1:" in later.output and re.search(
        rf"\| {trial} \| [\d,]+ \| 1 \|", later.output
    )


def test_verify_recipe_from_uses_another_recipe_with_the_trials_own_knobs(trained, data_dir):
    ranked = ranked_trials()
    client = local_client(trained / "mlruns")
    before = parent_ids(client)
    changed = trained / "changed.yaml"
    changed.write_text("extends: budget-8k\nrecipe: {rotation: 3, precise_bn: 500}\n")  # what differs
    args = verify_args(data_dir, "--trial", str(ranked[-1]), "--seeds", "1", "--recipe-from", str(changed))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    _, (run,) = new_parent(client, before)
    trial = optuna.load_study(study_name=STUDY, storage=open_storage(None)).trials[ranked[-1]]
    assert run.data.params["recipe.precise_bn"] == "500" and run.data.params["recipe.rotation"] == "3.0"
    assert float(run.data.params["recipe.lr"]) == pytest.approx(trial.params["lr"])
    assert int(run.data.params["recipe.batch_size"]) == trial.params["batch_size"]
    missing = runner.invoke(
        app, ["verify", "--recipe-from", str(trained / "nope.yaml"), "--data-dir", str(data_dir)]
    )
    assert missing.exit_code == 2 and "experiment file not found" in missing.output
