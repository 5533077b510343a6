"""A study ends with an answer: its best trial verified, registered, exported and claimed in one
line; `@champion` only for the full protocol with the target held; an interrupted verify resumes."""

from __future__ import annotations

import re

import pytest

from mnist_search.cli import app
from mnist_search.search.records import StudyRecord
from mnist_search.search.studies import load_study
from mnist_search.workflows.verify import Protocol
from tests.conftest import TINY, local_client, runner

STAGED = TINY.replace("recipe: {epochs: 2,", "recipe: {epochs: 2, replicas: 3,")


def test_only_the_full_protocol_can_make_a_champion():
    assert Protocol(60_000, 15, 3).full
    assert Protocol(60_000, 20, 5).full
    assert not Protocol(3_000, 15, 3).full  # fewer images (--limit-train)
    assert not Protocol(60_000, 2, 3).full  # fewer epochs
    assert not Protocol(60_000, 15, 2).full  # fewer seeds
    assert str(Protocol(3_000, 2, 3)) == "3,000 images, 2 epochs, 3 seeds (not the full protocol)"


CLAIM = re.compile(
    r"^verified trial (\d+): ([\d,]+) params, test (\d+\.\d\d)% ± (\d+\.\d\d) \(3 seeds\), worst seed's min of "
    r"last 3 epochs (\d+\.\d\d)%; target 99\.4% (held in every seed|not held \(worst seed \d+\.\d\d%\)) on "
    r"1,000 images, 2 epochs, 3 seeds \(not the full protocol\); mnist-search-b8000 version (\d+) "
    r"\(not @champion\); exported to (\S+) \(seed (\d)\)$",
    re.MULTILINE,
)


@pytest.mark.slow
def test_a_study_ends_with_its_best_trial_verified_exported_and_claimed(store, data_dir, tmp_path):
    (tmp_path / "staged.yaml").write_text(STAGED)
    args = ["study", "--experiment", "staged.yaml", "--trials", "2", "--limit-train", "1000",
            "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--verify"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"^verifying trial \d+ \([\d,]+ params\): 1,000 training images, 2 epochs, 3 seeds",
                     result.stdout, re.MULTILINE)  # fmt: skip
    claim = CLAIM.search(result.stdout)
    assert claim, result.stdout
    trial, params, mean, _std, worst, _held, version, out_dir, _seed = claim.groups()
    study = load_study(None, None)
    best = max(
        (t for t in study.trials if t.state.name == "COMPLETE"),
        key=lambda t: (len(t.user_attrs["seeds"]), t.value),
    )
    assert int(trial) == best.number and int(params.replace(",", "")) == best.user_attrs["params"]
    assert 10.0 <= float(worst) <= float(mean) <= 100.0  # above chance (10 %), a mean over its worst
    # The export, beside the store, loads and classifies.
    assert out_dir == str(store / "models" / "staged-b8000")
    import torch

    from mnist_search.core.data import load_mnist

    program = torch.export.load(f"{out_dir}/model.pt2").module()
    test = load_mnist(data_dir, val_size=0).test
    accuracy = (program(test.x[:2000] * 0.3081 + 0.1307).argmax(1) == test.y[:2000]).float().mean().item()
    assert accuracy > 0.1, accuracy
    # Registered, tagged with its protocol, and not the champion: 1,000 images and 2 epochs are a smoke run.
    client = local_client(store)
    registered = client.get_model_version("mnist-search-b8000", version)
    assert registered.tags["protocol"] == "1,000 images, 2 epochs, 3 seeds (not the full protocol)"
    assert "champion" not in client.get_registered_model("mnist-search-b8000").aliases
    # Recorded on the study: the same command again repeats the claim and trains nothing.
    assert StudyRecord.of(study).verified["claim"] == claim.group(0)
    seed_runs = len(
        client.search_runs(client.get_experiment_by_name("mnist-search-verify").experiment_id.split())
    )
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already has 2 trials done" in again.stdout and claim.group(0) in again.stdout
    assert "verifying" not in again.stdout
    experiment = client.get_experiment_by_name("mnist-search-verify").experiment_id
    assert len(client.search_runs([experiment])) == seed_runs


@pytest.mark.slow
def test_a_verify_run_again_trains_only_the_seeds_it_had_not_finished(store, data_dir, tmp_path):
    """What makes an interrupted verify resume: the seed runs it finished are read back from
    MLflow (their epochs from the metric histories), and only the others train."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    study = runner.invoke(app, ["study", "--experiment", "tiny.yaml", "--trials", "1", "--epochs", "1",
                                "--limit-train", "500", "--data-dir", str(data_dir), "--device", "cpu", "--quiet"])  # fmt: skip
    assert study.exit_code == 0, study.output
    verify = ["verify", "--trial", "0", "--epochs", "2", "--limit-train", "1000", "--data-dir", str(data_dir),
              "--device", "cpu", "--jobs", "1", "--resume"]  # fmt: skip
    first = runner.invoke(app, [*verify, "--seeds", "2"])
    assert first.exit_code == 0, first.output
    table = [line for line in first.stdout.splitlines() if line.startswith("| 0 |")]
    assert len(table) == 2
    again = runner.invoke(app, [*verify, "--seeds", "3"])
    assert again.exit_code == 0, again.output
    assert "2 seed run(s) reused: finished by an earlier verify of the same protocol" in again.stdout
    rows = [line for line in again.stdout.splitlines() if line.startswith("| 0 |")]
    assert rows[:2] == table  # the same figures, read back from MLflow
    assert len(rows) == 3 and "trial 0 seed 2: test" in again.stdout  # only seed 2 trained
    client = local_client(store)
    experiment = client.get_experiment_by_name("mnist-search-verify").experiment_id
    seed_runs = client.search_runs([experiment], "tags.kind = 'verify-run'")
    assert sorted(int(r.data.params["seed"]) for r in seed_runs) == [0, 1, 2]
    # Another protocol (more epochs) is another verify: nothing reused.
    other = runner.invoke(app, [*verify[:4], "3", *verify[5:], "--seeds", "1"])
    assert other.exit_code == 0 and "reused" not in other.stdout, other.output


@pytest.mark.slow
def test_the_champion_alias_goes_only_to_a_held_target(store, data_dir, tmp_path):
    """`crown`: a version that held the target (on the full protocol, which the caller decides)
    becomes @champion unless the champion has a better mean; one that did not never does."""
    from mnist_search.tracking.registry import crown

    (tmp_path / "tiny.yaml").write_text(TINY)
    result = runner.invoke(app, ["study", "--experiment", "tiny.yaml", "--trials", "3", "--epochs", "1",
                                 "--limit-train", "500", "--data-dir", str(data_dir), "--device", "cpu", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = [
        t.user_attrs["mlflow_run_id"] for t in load_study(None, None).trials if t.state.name == "COMPLETE"
    ]
    client = local_client(store)
    version, champion = crown(client, runs[0], 8000, False, 0.9990, tags={}, table="t")
    assert not champion and "champion" not in client.get_registered_model("mnist-search-b8000").aliases
    version, champion = crown(client, runs[1], 8000, True, 0.9950, tags={}, table="t")
    assert champion and client.get_registered_model("mnist-search-b8000").aliases["champion"] == version
    _, champion = crown(client, runs[2], 8000, True, 0.9945, tags={}, table="t")
    assert not champion and client.get_registered_model("mnist-search-b8000").aliases["champion"] == version
