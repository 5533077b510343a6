"""The default store keeps its promise: torn journal writes, killed workers, failing trials and bad
values lose nothing completed, leave no MLflow run RUNNING, and bad input writes nothing."""

from __future__ import annotations

import signal

import optuna
import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import load_experiment
from mnist_search.core.data import MNISTData, Split
from mnist_search.core.settings import mask_url
from mnist_search.search.journal import torn_bytes
from mnist_search.search.objective import NoHooks, Objective, TrialFailed
from mnist_search.search.owners import Owner
from mnist_search.search.storage import open_storage

from .conftest import EXPERIMENTS, TINY, local_client, one_line_exit_2, poll, runner, runs_of, start_cli

TORN = b'{"op_code":0,"worker_id":"dead","study_na'  # a record cut off mid-write, no newline


def journal(tmp_path):
    return tmp_path / "mlruns" / "optuna-journal.log"


def load(tmp_path, name="tiny-b8000") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(journal(tmp_path))))


def tiny_args(data_dir, trials=1, *extra) -> list[str]:
    return ["study", "--experiment", "tiny.yaml", "--trials", str(trials), "--limit-train", "1000",
            "--data-dir", str(data_dir), "--device", "cpu", "--quiet", *extra]  # fmt: skip


def finished(proc, timeout=300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def invoked(args) -> tuple[str, str]:
    """The command in this process (the `store` fixture's local store): stdout, stderr; exit 0."""
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def no_run_left_running(tmp_path) -> list:
    client = local_client(tmp_path / "mlruns")
    runs = runs_of(client, "mnist-search-studies")
    assert runs and all(r.info.status != "RUNNING" for r in runs), [
        (r.info.run_name, r.info.status) for r in runs
    ]
    return runs


# --- 1. a torn journal tail ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_torn_journal_tail_is_cut_by_the_next_writer_with_a_backup_and_every_study_survives(
    store, tmp_path, data_dir
):
    (tmp_path / "tiny.yaml").write_text(TINY)
    invoked(tiny_args(data_dir))
    invoked(tiny_args(data_dir, 1, "--study-name", "other"))
    intact = journal(tmp_path).read_bytes()
    with journal(tmp_path).open("ab") as f:  # a crash mid-append
        f.write(TORN)

    # The next command that writes (not `report`, a reader: test_trust_store) cuts it, once.
    _, err = invoked(tiny_args(data_dir, 2))
    assert [line for line in err.splitlines() if line] == [err.strip()]  # one line
    assert err.startswith("warning: ") and "cut a partial last record (41 bytes" in err
    assert journal(tmp_path).read_bytes().startswith(intact)  # cut back to the last complete record
    (backup,) = journal(tmp_path).parent.glob("optuna-journal.log.torn-*")
    assert backup.read_bytes() == intact + TORN  # the file as it was, kept

    # Both studies go on in the same file: the next appends start on a fresh line.
    invoked(tiny_args(data_dir, 2, "--study-name", "other"))
    assert torn_bytes(journal(tmp_path)) == 0
    for name in ("tiny-b8000", "other"):
        assert sum(t.state.name == "COMPLETE" for t in load(tmp_path, name).trials) == 2
    no_run_left_running(tmp_path)


def test_an_append_after_another_writer_died_mid_write_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "journal.log"
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    study.tell(study.ask(), 1.0)
    with path.open("ab") as f:  # a writer sharing the file died mid-append while this one runs
        f.write(TORN)
    study.tell(study.ask(), 2.0)  # this append cuts the torn bytes first
    fresh = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    assert [t.value for t in fresh.trials] == [1.0, 2.0]
    assert torn_bytes(path) == 0


# --- 2. kill -9 ---------------------------------------------------------------------------------


def running_trial(tmp_path, count=1):
    """`count` trials training (their MLflow run created), once they are."""

    def probe():
        trials = [
            t for t in load(tmp_path).trials if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs
        ]
        return trials if len(trials) >= count else None

    return poll(probe, f"{count} trial(s) never started training")


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_retries_the_trial_and_closes_its_run(tmp_path, data_dir):
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = tiny_args(data_dir, 1)
    args[args.index("1000")] = "8000"  # long enough to be killed inside the trial
    proc = start_cli(args, tmp_path)
    (dead,) = running_trial(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load(tmp_path).trials[dead.number].state.name == "RUNNING"  # wedged, as it was left

    out, err = finished(start_cli(args, tmp_path))
    assert "1/1 trials done" in out
    assert err.strip() == (
        f"warning: trial {dead.number}: worker died (pid {proc.pid} on {Owner.parse(dead.user_attrs['worker']).host}); "
        "marked FAIL (not counted), its parameters will be trained again"
    )
    study = load(tmp_path)
    failed = study.trials[dead.number]
    assert failed.state.name == "FAIL"
    assert (
        failed.user_attrs["fail_reason"]
        == f"worker died (pid {proc.pid} on {Owner.parse(dead.user_attrs['worker']).host})"
    )
    (retried,) = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert retried.params == dead.params  # its parameters, trained again
    runs = no_run_left_running(tmp_path)
    child = next(r for r in runs if r.info.run_id == dead.user_attrs["mlflow_run_id"])
    assert child.info.status == "FAILED" and child.data.tags["failure"].startswith("worker died")
    assert [r.info.status for r in runs if r.data.tags["kind"] == "study"] == ["FINISHED"]


@pytest.mark.slow
def test_kill_9_of_one_of_two_workers_is_one_line_and_the_other_finishes_the_study(tmp_path, data_dir):
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = tiny_args(data_dir, 3, "--jobs", "2")
    args[args.index("1000")] = "8000"
    proc = start_cli(args, tmp_path)
    victim = running_trial(tmp_path, count=2)[0]
    owner = Owner.parse(victim.user_attrs["worker"])
    import os

    os.kill(owner.pid, signal.SIGKILL)
    out, err = finished(proc, timeout=600)
    assert "3/3 trials done by 2 workers" in out
    assert err.strip() == (
        f"warning: worker {err.split()[2]} (pid {owner.pid}) was killed by SIGKILL; another worker trained its trial again"
    )
    study = load(tmp_path)
    assert study.trials[victim.number].state.name == "FAIL"
    assert study.trials[victim.number].user_attrs["fail_reason"].startswith("worker died")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    assert any(t.params == victim.params and t.state.name == "COMPLETE" for t in study.trials)
    no_run_left_running(tmp_path)


# --- 3. an exception inside a trial -------------------------------------------------------------

ONE_BY_ONE = """\
search:
  stages: [[{low: 4, high: 6}, {low: 4, high: 6}], [{low: 4, high: 6}, {low: 4, high: 6}, {low: 4, high: 6}]]
  transitions: [{low: 4, high: 6}]
recipe: {epochs: 1, batch_size: 128, optimizer: adam, lr: 0.01}
pruner: {kind: none}
"""


def test_a_last_batch_of_one_image_trains(store, data_dir, tmp_path):
    """Its last feature map is 1x1 with BatchNorm; 129 images at batch 128 left one image alone,
    which BatchNorm cannot normalise ("Expected more than 1 value per channel")."""
    exp = tmp_path / "one.yaml"
    exp.write_text(ONE_BY_ONE)
    spec = load_experiment(exp)
    assert spec.search is not None
    args = ["study", "--experiment", str(exp), "--trials", "1", "--limit-train", "129", "--data-dir", str(data_dir),
            "--device", "cpu", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (trial,) = [t for t in optuna.load_study(study_name="one-b8000", storage=open_storage(None)).trials
                if t.user_attrs.get("feasible")]  # fmt: skip
    assert trial.state.name == "COMPLETE"


def stable(exp):
    """The budget-8k space at a fixed, gentle learning rate: no trial here may diverge by chance."""
    return exp.search.model_copy(update={"lr": None}), exp.recipe.model_copy(update={"epochs": 1, "lr": 0.02})


def test_any_error_in_a_trial_fails_that_trial_with_its_reason_and_the_study_goes_on(mnist, monkeypatch):
    from mnist_search.training import train as training_module

    real_fit, calls = training_module.fit_replicas, []

    def fit_allocation_failure_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("cannot allocate 2 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training_module, "fit_replicas", fit_allocation_failure_once)
    exp = load_experiment(EXPERIMENTS / "budget-8k.yaml")
    data = MNISTData(Split(mnist.train.x[:300], mnist.train.y[:300]), Split(mnist.val.x[:100], mnist.val.y[:100]),
                     Split(mnist.test.x[:100], mnist.test.y[:100]))  # fmt: skip
    objective = Objective(*stable(exp), 8000, data, torch.device("cpu"))
    study = optuna.create_study(direction="maximize")
    while len(calls) < 2:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    trained = [t for t in study.trials if t.user_attrs.get("feasible")]
    assert [t.state.name for t in trained] == ["FAIL", "COMPLETE"]
    assert trained[0].user_attrs["fail_reason"] == "MemoryError: cannot allocate 2 GiB"


def test_a_trial_without_a_validation_score_fails_with_a_reason(mnist):
    exp = load_experiment(EXPERIMENTS / "budget-8k.yaml")
    empty = Split(mnist.val.x[:0], mnist.val.y[:0])
    data = MNISTData(
        Split(mnist.train.x[:300], mnist.train.y[:300]), empty, Split(mnist.test.x[:100], mnist.test.y[:100])
    )
    objective = Objective(*stable(exp), 8000, data, torch.device("cpu"), NoHooks())
    study = optuna.create_study(direction="maximize")
    while not any(t.user_attrs.get("feasible") for t in study.trials):
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    (trial,) = [t for t in study.trials if t.user_attrs.get("feasible")]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"].startswith("objective is nan")


def test_the_same_error_three_trials_in_a_row_stops_the_study_with_one_line(
    store, data_dir, tmp_path, monkeypatch
):
    from mnist_search.training import train as training_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom: the same fault every time")

    monkeypatch.setattr(training_module, "fit_replicas", broken)
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = runner.invoke(app, tiny_args(data_dir, 10))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert (
        lines == [lines[0]] and "the last 3 trials failed with the same error (RuntimeError: boom" in lines[0]
    )
    trained = [t for t in load(tmp_path).trials if t.user_attrs.get("feasible")]
    assert [t.state.name for t in trained] == ["FAIL"] * 3
    runs = no_run_left_running(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 4  # 3 trials and the study's parent


# --- 4. search ranges and other values, checked before anything is written ----------------------

BAD_SEARCH = {
    "lr-negative": ("lr: {low: -1, high: -0.5}", "search.lr: -1.0 is outside what recipe.lr accepts"),
    "weight-decay": ("weight_decay: {low: -0.1, high: 0.1}", "search.weight_decay: -0.1 is outside"),
    "lr-nan": ("lr: {low: .nan, high: 0.1}", "search.lr.low: Input should be a finite number"),
    "lr-inf": ("lr: {low: 0.1, high: .inf}", "search.lr.high: Input should be a finite number"),
    "rotation": (
        "rotation: {low: 400, high: 400}",
        "search.rotation: 400.0 is outside what recipe.rotation accepts",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_SEARCH))
def test_search_ranges_outside_the_recipe_rules_exit_2_at_load(name, store, tmp_path, data_dir):
    line, message = BAD_SEARCH[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.replace("search:\n", f"search:\n  {line}\n"))
    one_line_exit_2(
        runner.invoke(app, ["study", "--experiment", str(path), "--data-dir", str(data_dir)]), message
    )
    assert not store.exists()


def test_a_search_without_a_validation_split_is_a_config_error(store, tmp_path, data_dir):
    path = tmp_path / "noval.yaml"
    path.write_text(TINY.replace("recipe: {", "recipe: {val_size: 0, "))
    one_line_exit_2(runner.invoke(app, ["study", "--experiment", str(path), "--data-dir", str(data_dir)]),
                    "recipe.val_size: a search needs a validation split")  # fmt: skip
    assert not store.exists()


def test_values_checked_before_anything_is_written(store, tmp_path, data_dir):
    (tmp_path / "tiny.yaml").write_text(TINY)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    huge = tmp_path / "huge.yaml"
    huge.write_text("spec:\n  stages: [[100000000]]\n")
    one_image = tmp_path / "one-image.yaml"
    one_image.write_text("spec:\n  stages: [[8]]\nrecipe: {val_size: 59999}\n")
    d = ["--data-dir", str(data_dir)]
    cases = [
        (["study", "--tracking-uri", str(tmp_path / "plain"), *d], "not one MLflow can use"),
        (
            ["study", "--tracking-uri", f"sqlite:///{tmp_path}/nowhere/m.db", *d],
            "does not exist or is not writable",
        ),
        (["study", "--study-name", "x" * 201, *d], "use 1 to 200 printable characters"),
        (["study", "--jobs", "64", *d], "--jobs 64: this machine runs at most"),
        (["verify", "--out", str(a_file), *d], "exists and is not a folder"),
        (["export", "--out", str(a_file)], "exists and is not a folder"),
        (["report"], "no study storage there (the file does not exist)"),
        (["train", "seed-model-3", "--experiment-name", " ", *d], "--experiment-name ' ': use 1 to 200"),
        (["train", str(huge), *d], "spec.stages.0.0: Input should be less than or equal to 1024"),
        (["train", str(one_image), *d], "1 training image(s) left (val_size 59999"),
    ]
    for args, message in cases:
        one_line_exit_2(runner.invoke(app, args), message)
        assert not store.exists(), args  # neither store was touched


# --- 4b. a study that outlived its tracking store ----------------------------------------------


@pytest.mark.slow
def test_a_study_resumed_against_another_tracking_store_ends_0_and_names_where_its_best_run_is(
    tmp_path, data_dir
):
    """The study's storage kept, its MLflow store not (wiped, moved, another server): resuming
    tracks the new trials here and ends 0. The best trial's run is in the other store, so the
    parent names it instead of linking or registering it (this was a traceback, after the workers
    each reported the tracking server failed, which it had not)."""
    from mnist_search.tracking.registry import registered_name

    kept = str(tmp_path / "kept.journal")
    args = ["study", "--experiment", "tiny.yaml", "--storage", kept, "--data-dir", str(data_dir),
            "--device", "cpu", "--quiet"]  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"  # each a working folder with its store
    for folder in (first, second):
        folder.mkdir()
        (folder / "tiny.yaml").write_text(TINY)
    finished(start_cli([*args, "--trials", "1", "--limit-train", "3000", "--jobs", "1"], first))
    # 10x fewer images: trial 0 stays the best. Two workers: each closes the study, then the command.
    out, err = finished(start_cli([*args, "--trials", "2", "--limit-train", "300", "--jobs", "2"], second))
    assert "Traceback" not in out + err and "error" not in err, err

    study = optuna.load_study(study_name="tiny-b8000", storage=open_storage(kept))
    first_run, second_run = (
        t.user_attrs["mlflow_run_id"] for t in study.trials if t.state.name == "COMPLETE"
    )
    assert study.best_trial.number == 0
    client = local_client(second / "mlruns")
    (parent,) = [r for r in runs_of(client, "mnist-search-studies") if r.data.tags.get("kind") == "study"]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "0"
    assert "best_run_id" not in parent.data.tags
    assert (
        parent.data.tags["best_run_elsewhere"] == f"{first_run} (another tracking store; not registered here)"
    )
    assert [
        r.info.run_id for r in runs_of(client, "mnist-search-studies") if r.info.run_id != parent.info.run_id
    ] == [second_run]  # the new trial, tracked here
    assert client.search_model_versions(f"name='{registered_name(8000)}'") == []
    earlier = local_client(first / "mlruns")
    assert [v.run_id for v in earlier.search_model_versions(f"name='{registered_name(8000)}'")] == [first_run]


# --- 5. secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://u:pw@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),
        ("postgresql+psycopg://u:pw@db/optuna", "postgresql+psycopg://u:***@db/optuna"),
        (
            "postgresql://u@db/optuna?password=pw&sslmode=require",
            "postgresql://u@db/optuna?password=***&sslmode=require",
        ),
        ("postgresql://:pw@db/optuna", "postgresql://:***@db/optuna"),
        ("http://:pw@tracking:5000", "http://:***@tracking:5000"),
        ("https://user:p%40ss@tracking/mlflow", "https://user:***@tracking/mlflow"),
        ("http://tracking:5000/?token=pw", "http://tracking:5000/?token=***"),
        ("postgresql://postgres@127.0.0.1:5432/optuna", "postgresql://postgres@127.0.0.1:5432/optuna"),
        ("/home/me/mlruns/optuna-journal.log", "/home/me/mlruns/optuna-journal.log"),
    ],
)
def test_every_url_form_is_masked(url, masked):
    assert mask_url(url) == masked
    line = f"--storage {url}: cannot open (connection refused)"
    assert mask_url(line) == f"--storage {masked}: cannot open (connection refused)"
    assert "pw" not in mask_url(url).replace("pwd", "")


def test_a_seed_torch_cannot_take_is_a_usage_error(store):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mnist_search", "study", "--seed", "-1"],
                          check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: Invalid value for '--seed'"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not store.exists()


def test_workers_writing_the_same_parent_tag_at_once_all_succeed(tmp_path):
    """Two --jobs workers ending together write the study parent's tags at the same moment; the
    stores' insert-or-update is not atomic (a worker of a real search exited with "UNIQUE
    constraint failed: tags.key, tags.run_uuid"). Four clients at a time per new key, on a real
    SQLite store: plain set_tag loses races, RunLog.tags does not."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    from mnist_search.tracking.client import RunLog

    uri = f"sqlite:///{tmp_path / 'race.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("race")).info.run_id

    def race(write, keys: int, until_lost: bool = False) -> list[str]:
        errors = []
        for key in range(keys):
            if until_lost and errors:
                break
            start = threading.Barrier(4)

            def one(value, key=key, start=start):
                own = mlflow.MlflowClient(uri)  # as a separate worker has
                start.wait()
                try:
                    write(own, f"{write.__name__}-{key}", str(value))
                except mlflow.exceptions.MlflowException as exc:
                    errors.append(str(exc))

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(one, range(4)))
        return errors

    def plain(own, key, value):
        own.set_tag(run, key, value)

    def tolerant(own, key, value):
        RunLog(own, run).tags({key: value})

    # The hazard is real: plain writes lose a race within a few keys (on a busy machine the
    # threads line up less often, so it races key after key until one is lost, up to 100).
    lost = race(plain, 100, until_lost=True)
    assert lost and all("UNIQUE constraint failed" in e for e in lost)
    assert race(tolerant, 30) == []
    tags = client.get_run(run).data.tags
    assert all(tags[f"tolerant-{k}"] in {"0", "1", "2", "3"} for k in range(30))
