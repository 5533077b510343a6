"""Many workers on one study: real PostgreSQL (Optuna's RDB storage and MLflow's backend), a real
`mlflow server` over HTTP, real worker processes, and a worker killed with SIGKILL mid-trial.

Select with `pytest -m postgres`. PostgreSQL must run on 127.0.0.1:5432 (trust auth): a missing
server fails these tests, it does not skip them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import psycopg
import pytest

from mnist_search.search.leaderboard import counts_toward_total
from mnist_search.search.owners import Owner
from mnist_search.search.storage import open_storage

from .conftest import start_mlflow_server, stop_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
PG = "postgresql://postgres@127.0.0.1:5432"
TINY = """\
search:
  stages: [[{low: 4, high: 8}, {low: 4, high: 8}], [{low: 4, high: 8}]]
  transitions: [{low: 4, high: 8}]
  dropout: {low: 0.0, high: 0.05}
  lr: {low: 0.01, high: 0.1, log: true}
recipe: {epochs: 1, optimizer: adam, lr: 0.01, batch_size: 64}
pruner: {kind: none}
"""


@pytest.fixture
def databases():
    """Two fresh databases (Optuna, MLflow), dropped afterwards."""
    names = [f"mnist_search_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required on 127.0.0.1:5432 for these tests: {exc}")
    with admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        yield names
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_mlflow(databases, tmp_path):
    proc, uri = start_mlflow_server(
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{databases[1]}",
        tmp_path / "artifacts",
        tmp_path / "server.log",
    )
    yield uri
    stop_server(proc)


def worker(args: list[str], data_dir, tmp_path, **env) -> subprocess.Popen:
    environment = (
        os.environ | {"MNIST_SEARCH_THREADS": "1", "MNIST_SEARCH_STORE": str(tmp_path / "local")} | env
    )
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_search", *args, "--data-dir", str(data_dir), "--device", "cpu", "--quiet"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def mlflow_runs(uri: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mnist-search-studies")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return (
        client,
        [r for r in runs if r.data.tags.get("kind") == "study"],
        [r for r in runs if r.data.tags.get("kind") == "trial"],
    )


def test_three_workers_share_one_study_exactly(databases, pg_mlflow, data_dir, tmp_path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY)
    storage = f"{PG}/{databases[0]}"
    args = ["study", "--experiment", str(exp), "--budget", "8000", "--trials", "7", "--study-name", "shared",
            "--limit-train", "1000", "--storage", storage, "--tracking-uri", pg_mlflow]  # fmt: skip
    procs = [worker(args, data_dir, tmp_path) for _ in range(3)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
        assert "Traceback" not in text and "lock" not in text.lower(), text

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    counted = [t for t in study.trials if counts_toward_total(t)]
    assert len(counted) == 7  # the total, exactly, across three processes
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len({t.user_attrs["worker"] for t in counted}) >= 2  # the work was really shared

    client, parents, children = mlflow_runs(pg_mlflow)
    assert len(parents) == 1
    by_trial = {}
    for child in children:
        by_trial.setdefault(int(child.data.tags["trial_number"]), []).append(child)
    assert sorted(by_trial) == sorted(t.number for t in counted)  # every trial's run, exactly once
    for runs in by_trial.values():
        assert len(runs) == 1
        assert runs[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert len(client.get_metric_history(runs[0].info.run_id, "test/acc")) == 1
        assert runs[0].data.tags["storage"] == storage  # no password in this URL to mask


def test_a_worker_killed_mid_trial_is_failed_retried_and_nothing_is_lost(
    databases, pg_mlflow, data_dir, tmp_path
):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY.replace("epochs: 1", "epochs: 3"))
    storage = f"{PG}/{databases[0]}"
    args = ["study", "--experiment", str(exp), "--budget", "8000", "--trials", "4", "--study-name", "killed",
            "--limit-train", "4000", "--storage", storage, "--tracking-uri", pg_mlflow]  # fmt: skip
    fast = {"MNIST_SEARCH_HEARTBEAT_SECONDS": "1", "MNIST_SEARCH_GRACE_SECONDS": "4"}
    procs = {}
    for _ in range(2):
        p = worker(args, data_dir, tmp_path, **fast)
        procs[p.pid] = p
    rdb = open_storage(storage)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="killed", storage=rdb)
        except KeyError:
            continue
        for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):
            attrs = t.user_attrs
            if attrs.get("feasible") and "mlflow_run_id" in attrs and not attrs.get("surplus"):
                pid = Owner.parse(attrs["worker"]).pid
                victim = (t.number, attrs["mlflow_run_id"], pid)
                break
    assert victim is not None, "no trial started training"
    number, run_id, pid = victim
    os.kill(pid, signal.SIGKILL)
    procs.pop(pid).wait(timeout=30)
    (survivor,) = procs.values()
    text = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, text

    study = optuna.load_study(study_name="killed", storage=rdb)
    killed = study.trials[number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == killed.params  # the same architecture, trained again
    assert len([t for t in study.trials if counts_toward_total(t)]) == 4  # nothing completed lost
    assert not study.get_trials(states=[optuna.trial.TrialState.RUNNING])

    client, _parents, children = mlflow_runs(pg_mlflow)
    killed_run = client.get_run(run_id)
    assert killed_run.info.status == "FAILED" and "heartbeat" in killed_run.data.tags["failure"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4


def test_passwords_never_reach_logs_tags_or_params(databases, pg_mlflow, data_dir, tmp_path):
    secret = "s3cret-pw"  # trust auth on this server ignores it, so the run goes through
    storage = f"postgresql://postgres:{secret}@127.0.0.1:5432/{databases[0]}"
    tracking_uri = pg_mlflow.replace("http://", f"http://someone:{secret}@")
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY)
    args = ["study", "--experiment", str(exp), "--budget", "8000", "--trials", "1", "--study-name", "masked",
            "--limit-train", "500", "--storage", storage, "--tracking-uri", tracking_uri]  # fmt: skip
    proc = worker(args, data_dir, tmp_path)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text
    assert secret not in text and "postgres:***@" in text
    _client, parents, children = mlflow_runs(pg_mlflow)
    for run in parents + children:
        values = list(run.data.tags.values()) + list(run.data.params.values())
        assert not any(secret in v for v in values)
        assert run.data.tags["storage"].startswith("postgresql://postgres:***@")
    # The command the study recorded, and verify's table and record of both commands: masked too.
    recorded = optuna.load_study(study_name="masked", storage=open_storage(storage)).user_attrs["command"]
    assert recorded.startswith("mnist-search study --budget 8000") and "postgres:***@" in recorded
    assert secret not in recorded
    out = tmp_path / "verified"
    verify = subprocess.run(
        [sys.executable, "-m", "mnist_search", "verify", "--study", "masked", "--seeds", "1", "--epochs", "1",
         "--limit-train", "500", "--storage", storage, "--tracking-uri", tracking_uri, "--out", str(out),
         "--data-dir", str(data_dir), "--device", "cpu"],
        env=os.environ | {"MNIST_SEARCH_STORE": str(tmp_path / "local")},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    text = verify.stdout + verify.stderr
    assert verify.returncode == 0, text
    assert secret not in text
    for name in ("verify.md", "verify.json"):
        written = (out / name).read_text()
        assert secret not in written and "postgresql://postgres:***@" in written, name
    assert json.loads((out / "verify.json").read_text())["search"]["command"] == recorded


def test_no_password_in_any_url_form_reaches_a_command_line_a_log_or_a_tag(
    databases, pg_mlflow, data_dir, tmp_path
):
    """--jobs workers get the URLs on stdin, never on their command lines (`ps` shows those to every
    local user); the query-string and empty-user forms are masked like user:password@."""
    import psutil

    secret = "s3cret-pw"  # trust auth ignores it
    exp = tmp_path / "tiny.yaml"
    exp.write_text(TINY)
    forms = [  # (storage, tracking URI, extra args)
        (
            f"{PG}/{databases[0]}?password={secret}",
            pg_mlflow.replace("http://", f"http://:{secret}@"),
            ["--jobs", "2"],
        ),
        (f"postgresql://:{secret}@127.0.0.1:5432/{databases[0]}", pg_mlflow, []),  # user: the OS user
    ]
    for n, (storage, tracking_uri, extra) in enumerate(forms):
        args = ["study", "--experiment", str(exp), "--trials", "1", "--study-name", f"masked-{n}",
                "--limit-train", "500", "--storage", storage, "--tracking-uri", tracking_uri, *extra]  # fmt: skip
        proc = worker(args, data_dir, tmp_path)
        seen = []
        while proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    seen.append(" ".join(child.cmdline()))
                except psutil.Error:
                    pass
            time.sleep(0.2)
        text = proc.stdout.read()
        assert proc.returncode == 0, text
        assert secret not in text
        assert all(secret not in line for line in seen)
        if extra:
            assert any("study-worker" in line for line in seen)  # the workers were watched
    _client, parents, children = mlflow_runs(pg_mlflow)
    assert len(parents) == 2 and len(children) == 2
    for run in parents + children:
        values = list(run.data.tags.values()) + list(run.data.params.values())
        assert not any(secret in v for v in values)
    storages = {run.data.tags["storage"] for run in parents}
    assert storages == {
        f"{PG}/{databases[0]}?password=***",
        f"postgresql://:***@127.0.0.1:5432/{databases[0]}",
    }
