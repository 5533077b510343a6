"""Fail well: every bad input is one line + exit 2 with nothing written; faults keep the work done."""

from __future__ import annotations

import re
import signal
import time

import mlflow
import optuna
import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import load_experiment
from mnist_search.core.data import MNISTData, Split
from mnist_search.search.objective import NoHooks, Objective, TrialFailed
from mnist_search.search.storage import open_storage

from .conftest import (
    BAD_YAML,
    EXPERIMENTS,
    SECRET,
    TINY,
    free_port,
    local_client,
    one_line_exit_2,
    poll,
    runner,
    runs_of,
    start_cli,
    start_mlflow_server,
    stop_server,
    tiny_trained_study,
)  # fmt: skip

EXTRA_BAD = {
    "unsafe.yaml": ('spec: !!python/object/apply:os.system ["echo pwned"]\n', "malformed YAML"),
    "types.yaml": (
        "spec:\n  stages: [[8]]\n  dropout: lots\n",
        "spec.dropout: Input should be a valid number",
    ),
    "range.yaml": ("search:\n  stages: [[{low: 10, high: 4}]]\n", "search.stages.0.0: min > max (10 > 4)"),
}


@pytest.mark.parametrize("name", sorted(BAD_YAML | EXTRA_BAD))
def test_bad_experiment_files_for_study_exit_2_and_write_nothing(name, tmp_path, store):
    text, message = (BAD_YAML | EXTRA_BAD)[name]
    path = tmp_path / name
    path.write_text(text)
    one_line_exit_2(runner.invoke(app, ["study", "--experiment", str(path)]), str(path), message)
    assert not store.exists()


def test_unreadable_experiment_file(tmp_path, store):
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    one_line_exit_2(runner.invoke(app, ["study", "--experiment", str(folder)]), "cannot read experiment file")


def test_cuda_without_gpu_and_unknown_device(store):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_line_exit_2(runner.invoke(app, ["study", "--device", "cuda"]), "--device cuda: no CUDA GPU")
    one_line_exit_2(runner.invoke(app, ["study", "--device", "quantum"]), "unknown device")
    assert not store.exists()


@pytest.mark.slow
def test_an_unknown_pack_layout_setting_exits_2_and_writes_nothing(store, data_dir, tmp_path):
    """MNIST_SEARCH_PACK (layout.py) is checked by study, train and verify before they write."""
    common = tiny_trained_study(tmp_path, data_dir)
    journal = store / "optuna-journal.log"
    before = journal.read_bytes()
    client = local_client(store)
    runs = {e.name: len(runs_of(client, e.name)) for e in client.search_experiments()}
    for args in (
        ["study", "--experiment", "tiny.yaml", "--trials", "2", "--epochs", "1", "--limit-train", "1000"],
        ["train", "seed-model-1", "--epochs", "1", "--limit-train", "1000"],
        ["verify", "--study", "tiny-b8000", "--seeds", "2", "--epochs", "1", "--limit-train", "1000"],
    ):
        result = runner.invoke(app, [*args, *common], env={"MNIST_SEARCH_PACK": "fastest"})
        one_line_exit_2(
            result, "MNIST_SEARCH_PACK=fastest: unknown pack layout (use auto, grouped, separate)"
        )
    assert journal.read_bytes() == before
    assert {e.name: len(runs_of(client, e.name)) for e in client.search_experiments()} == runs


def test_storage_that_cannot_be_parsed_or_reached(store, data_dir):
    one_line_exit_2(runner.invoke(app, ["study", "--storage", "foo://x/y", "--data-dir", str(data_dir)]),
                    "unsupported scheme 'foo'")  # fmt: skip
    start = time.monotonic()
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/nowhere"
    line = one_line_exit_2(
        runner.invoke(app, ["study", "--storage", url, "--data-dir", str(data_dir)]), "cannot open"
    )
    assert time.monotonic() - start < 10
    assert SECRET not in line and "postgres:***@" in line
    assert not (store / "mlflow.db").exists()


def test_unreachable_tracking_server_is_reported_within_seconds(store, data_dir):
    start = time.monotonic()
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    line = one_line_exit_2(runner.invoke(app, ["study", "--tracking-uri", uri, "--data-dir", str(data_dir)]),
                           "is unreachable")  # fmt: skip
    assert time.monotonic() - start < 10
    assert SECRET not in line
    assert not store.exists()  # neither the study storage nor MLflow was touched


def test_missing_data_while_offline(store, tmp_path):
    line = one_line_exit_2(runner.invoke(app, ["study", "--data-dir", str(tmp_path / "nodata")]),
                           "not found in", "download failed")  # fmt: skip
    assert "train-images-idx3-ubyte" in line
    assert not store.exists()


def test_corrupt_data_file_is_named(store, tmp_path, data_dir):
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").glob("*.gz"):
        (raw / f.name).write_bytes(f.read_bytes())
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    one_line_exit_2(runner.invoke(app, ["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--data-dir", str(tmp_path / "d")]),
                    "t10k-images-idx3-ubyte.gz: cannot read")  # fmt: skip
    assert not store.exists()


class Recorder(NoHooks):
    def __init__(self):
        self.ended = []

    def trial_ended(self, record, model):
        self.ended.append((record.number, record.state, record.reason))


def test_cuda_out_of_memory_fails_the_trial_and_the_study_goes_on(mnist, monkeypatch):
    """Fault injection: the first fit_replicas raises CUDA's OOM error; the next trial trains normally."""
    from mnist_search.training import train as training_module

    real_fit, calls = training_module.fit_replicas, []

    def fit_once_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training_module, "fit_replicas", fit_once_out_of_memory)
    space = load_experiment(EXPERIMENTS / "budget-8k.yaml").search
    data = MNISTData(Split(mnist.train.x[:500], mnist.train.y[:500]), Split(mnist.val.x[:200], mnist.val.y[:200]),
                     Split(mnist.test.x[:200], mnist.test.y[:200]))  # fmt: skip
    hooks = Recorder()
    recipe = load_experiment(EXPERIMENTS / "budget-8k.yaml").recipe.model_copy(update={"epochs": 1})
    objective = Objective(space, recipe, 8000, data, torch.device("cpu"), hooks)
    study = optuna.create_study(direction="maximize")
    while len(hooks.ended) < 2:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))
    assert hooks.ended[0][1:] == ("FAIL", "CUDA out of memory")
    assert hooks.ended[1][1] == "COMPLETE"
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "CUDA out of memory"


def wait_for(study_name, storage_path, predicate, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name=study_name, storage=open_storage(str(storage_path)))
        except (KeyError, ValueError, OSError):
            continue
        found = predicate(study)
        if found is not None:
            return found
    raise TimeoutError("the study never reached the expected state")


def running_child_after_a_finished_one(store):
    """The trial number of a child run in its first epoch, once another child run has finished."""
    children = runs_of(local_client(store), "mnist-search-studies", "trial")
    finished = [r for r in children if r.info.status == "FINISHED"]
    fresh = [  # no epoch logged yet (its size metrics are logged at its start)
        int(r.data.tags["trial_number"])
        for r in children
        if r.info.status == "RUNNING" and "test/acc" not in r.data.metrics
    ]
    return fresh[0] if finished and fresh else None


def running_after_one_complete(study):
    """A trial in its first epoch (tracked, no epoch reported yet) after one trial completed."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    running = [
        t
        for t in study.trials
        if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs and not t.intermediate_values
    ]
    return running[0].number if complete and running else None


def test_an_interrupt_while_optuna_records_a_finished_trial_is_an_interrupt(tmp_path, monkeypatch):
    """Optuna 5.0, interrupted inside its tell of a finished trial, raises UnboundLocalError from
    its own `finally` (seen stopping a search with `timeout -s INT`: a worker printed a traceback).
    The signal's moment is reproduced by the storage read that tell makes raising KeyboardInterrupt."""
    from mnist_search.workflows.study import _optimize

    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    finished: list[int] = []
    real_get_trial = storage.get_trial

    def get_trial(trial_id):
        if finished and len(finished) == 1:
            finished.append(-1)  # once
            raise KeyboardInterrupt
        return real_get_trial(trial_id)

    monkeypatch.setattr(storage, "get_trial", get_trial)
    before = signal.getsignal(signal.SIGTERM)
    try:
        status = _optimize(study, lambda trial: finished.append(trial.number) or 0.5, [], None)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert status == ("KILLED", None)
    assert finished == [0, -1]  # the objective ran once, and the interrupt came in its tell


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "started_in_background"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-to-a-background-study"],
)
def test_interrupting_a_study_fails_the_running_trial_closes_runs_and_resumes(
    sig, started_in_background, tmp_path, data_dir
):
    """Also `kill -INT` on a study started as a script's background job (`nohup ... &`: SIGINT
    inherited ignored) with 2 workers: the parent forwards it and the workers take it as Ctrl-C
    (before, the workers inherited the ignored SIGINT and trained on)."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    # 6,000 images x 2 epochs: long enough that the signal lands inside the trial's first epoch.
    args = ["study", "--experiment", "tiny.yaml", "--budget", "8000", "--trials", "3", "--limit-train", "6000",
            "--data-dir", str(data_dir), "--device", "cpu", "--quiet"]  # fmt: skip
    if started_in_background:
        args += ["--jobs", "2"]
    proc = start_cli(args, tmp_path, signal.SIG_IGN if started_in_background else signal.SIG_DFL)
    journal = tmp_path / "mlruns" / "optuna-journal.log"
    # Watch MLflow's database, not the journal: reading the journal takes its file lock, and a
    # signal landing while the study waits for that lock is not what this test is about.
    number = poll(
        lambda: running_child_after_a_finished_one(tmp_path / "mlruns"),
        "no trial started after a completed one",
    )
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    # Said once, by the command (its workers say nothing): "trial" alone, "trials" with workers.
    said = re.findall(r"^interrupted: the running trials? (?:was|were) marked FAIL", stderr, re.MULTILINE)
    assert len(said) == 1 and "Traceback" not in stderr, stderr

    study = optuna.load_study(study_name="tiny-b8000", storage=open_storage(str(journal)))
    interrupted = study.trials[number]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["fail_reason"] == "interrupted"
    completed_before = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    client = local_client(tmp_path / "mlruns")
    assert client.get_run(interrupted.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    exp_id = client.get_experiment_by_name("mnist-search-studies").experiment_id
    runs = client.search_runs([exp_id])
    assert all(r.info.status != "RUNNING" for r in runs)  # every run closed with a terminal status
    assert [r.info.status for r in runs if r.data.tags["kind"] == "study"] == ["KILLED"]

    again = start_cli(args, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    study = optuna.load_study(study_name="tiny-b8000", storage=open_storage(str(journal)))
    after = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert all(after[n] == v for n, v in completed_before.items())  # completed trials intact
    assert "3/3 trials done" in out


def wait_for_metric(client_factory, run_name_prefix, runs=1):
    """Wait until `runs` RUNNING runs whose names start with the prefix have logged an epoch."""

    def training():
        client = client_factory()
        ids = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            ids,
            filter_string=f"attributes.status = 'RUNNING' and attributes.run_name LIKE '{run_name_prefix}%'",
        )
        return True if sum("test/acc" in r.data.metrics for r in found) >= runs else None

    poll(training, f"no {run_name_prefix}* run logged an epoch")


@pytest.mark.slow
def test_sigterm_during_verify_and_train_closes_their_runs_and_exits_130(tmp_path, data_dir):
    common = tiny_trained_study(tmp_path, data_dir)
    client = local_client(tmp_path / "mlruns")
    verify = ["verify", "--study", "tiny-b8000", "--epochs", "40", "--limit-train", "3000", *common]
    cases = [  # (command, the run name prefix to wait for, how many of those runs must be training)
        ([*verify, "--jobs", "1"], "verify-trial", 1),
        ([*verify, "--seeds", "2", "--jobs", "2"], "verify-trial", 2),  # both worker processes
        (["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--epochs", "40", "--limit-train", "3000",
          "--experiment-name", "sigterm", *common], "seed-model-3", 1),
    ]  # fmt: skip
    for args, prefix, running in cases:
        proc = start_cli(args, tmp_path)
        wait_for_metric(lambda: local_client(tmp_path / "mlruns"), prefix, runs=running)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert stderr.startswith("interrupted:") and "Traceback" not in stderr
    runs = client.search_runs(
        [client.get_experiment_by_name(n).experiment_id for n in ("mnist-search-verify", "sigterm")]
    )
    status = sorted((r.info.run_name, r.info.status) for r in runs)
    assert status == [
        ("seed-model-3-s0", "FAILED"),
        ("verify-tiny-b8000", "KILLED"),
        ("verify-tiny-b8000", "KILLED"),
        # verify: seeds 0, 1, 2 train as one pack, all three runs were open, all three closed;
        # --jobs 2 --seeds 2: one seed per worker, both were training, both closed.
        ("verify-trial-0-seed-0", "FAILED"),
        ("verify-trial-0-seed-0", "FAILED"),
        ("verify-trial-0-seed-1", "FAILED"),
        ("verify-trial-0-seed-1", "FAILED"),
        ("verify-trial-0-seed-2", "FAILED"),
    ], status


@pytest.mark.slow
def test_tracking_server_going_away_fails_the_trial_and_keeps_completed_ones(tmp_path, data_dir):
    proc_server, uri = start_mlflow_server(
        f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "art", tmp_path / "srv.log"
    )
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["study", "--experiment", "tiny.yaml", "--budget", "8000", "--trials", "6", "--limit-train", "2000",
            "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--tracking-uri", uri]  # fmt: skip
    proc = start_cli(args, tmp_path)
    journal = tmp_path / "mlruns" / "optuna-journal.log"
    wait_for("tiny-b8000", journal, running_after_one_complete)
    stop_server(proc_server, signal.SIGKILL)
    start = time.monotonic()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert (
        lines[-1].startswith("error: tracking server http://127.0.0.1:") and "failed mid-study" in lines[-1]
    )
    assert "re-run the same command to resume" in lines[-1] and "Traceback" not in stderr
    assert time.monotonic() - start < 120
    study = optuna.load_study(study_name="tiny-b8000", storage=open_storage(str(journal)))
    assert [t for t in study.trials if t.state.name == "COMPLETE"]  # completed results kept
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


@pytest.mark.slow
def test_tracking_server_going_away_mid_verify_is_one_line_and_exit_1(tmp_path, data_dir):
    common = tiny_trained_study(tmp_path, data_dir)
    proc_server, uri = start_mlflow_server(
        f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "art", tmp_path / "srv.log"
    )
    proc = start_cli(["verify", "--study", "tiny-b8000", "--epochs", "40", "--limit-train", "3000",
                        "--tracking-uri", uri, *common], tmp_path)  # fmt: skip
    wait_for_metric(lambda: mlflow.MlflowClient(tracking_uri=uri), "verify-trial")
    stop_server(proc_server, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: tracking http://127.0.0.1:") and "failed mid-verify" in last, stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_two_commands_starting_together_on_a_fresh_local_store_both_succeed(tmp_path, data_dir):
    """The first touch of a fresh SQLite store creates its schema; two processes doing it at once
    used to fail with 'table ... already exists' (a traceback, exit 1)."""
    args = ["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--epochs", "1", "--limit-train", "256",
            "--data-dir", str(data_dir), "--device", "cpu", "--experiment-name", "together"]  # fmt: skip
    procs = [start_cli(args, tmp_path) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in outcomes:
        assert code == 0, err[-2000:]
    client = local_client(tmp_path / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
