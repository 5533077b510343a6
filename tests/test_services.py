"""Services that are still starting (a compose stack coming up, a restarted container): a study
waits for them within --service-wait; what waiting cannot mend fails at once. And a data folder
that is read-only is named as such, not reported as a failed download."""

from __future__ import annotations

import http.server
import logging
import subprocess
import threading

import pytest

from mnist_search.cli import app
from mnist_search.search.storage import StorageError, open_storage
from mnist_search.tracking.client import TrackingError, check_tracking

from .conftest import (
    console_script,
    free_port,
    one_line_exit_2,
    runner,
    start_cli,
    start_mlflow_server,
    stop_server,
    study_args,
)

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def warned():
    """The warnings our logger emits during the test (whatever handlers the CLI has set on it)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("mnist_search")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.slow
def test_a_study_waits_for_a_tracking_server_that_comes_up_late(tmp_path, data_dir):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    study = start_cli(
        [*study_args(data_dir, trials=1), "--tracking-uri", uri, "--service-wait", "180"], tmp_path
    )
    server = None
    try:
        # The study is waiting (its one warning line) before any server exists on that port.
        line = study.stderr.readline()
        assert f"tracking server {uri} is unreachable" in line and "waiting up to 180 s" in line, line
        assert study.poll() is None
        root = tmp_path / "server"
        root.mkdir()
        server, _ = start_mlflow_server(
            f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log", port=port
        )
        _, err = study.communicate(timeout=300)
        assert study.returncode == 0, err
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("mnist-search-studies")
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 1 and children[0].info.status == "FINISHED"
    finally:
        if study.poll() is None:
            study.kill()
        if server is not None:
            stop_server(server)


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self):  # the stdlib's name
        type(self).requests += 1
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_server_that_answers_4xx_is_not_waited_for(warned):
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError, match="answered HTTP 404") as err:
            check_tracking(f"http://127.0.0.1:{server.server_port}", wait=60)
    finally:
        server.shutdown()
    assert not err.value.transient
    assert _NotMlflow.requests == 1  # asked once, no retries
    assert not warned


def test_a_database_server_that_cannot_be_reached_is_waited_for_then_named(warned):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/optuna"
    with pytest.raises(StorageError, match="cannot open") as err:
        open_storage(url, wait=3)
    assert err.value.transient
    assert len(warned) == 1 and "waiting up to 3 s" in warned[0].getMessage()


def test_a_missing_database_is_not_waited_for(warned):
    with pytest.raises(StorageError, match='database "no_such_db_mnist_search" does not exist') as err:
        open_storage(f"{PG}/no_such_db_mnist_search", wait=60)
    assert not err.value.transient
    assert not warned


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--service-wait", "-1"], {}, "Input should be greater than or equal to 0"),
        ([], {"MNIST_SEARCH_SERVICE_WAIT": "soon"}, "(env var: 'MNIST_SEARCH_SERVICE_WAIT')"),
    ],
)
def test_service_wait_must_be_a_number_of_seconds(args, env, message, store):
    proc = console_script("study", *args, **env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: Invalid value for '--service-wait'") and message in proc.stderr
    assert not store.exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """tmp_path/ro: an empty folder bind-mounted read-only (as a container's `:ro` volume)."""
    source, target = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_a_read_only_data_folder_without_mnist_is_named(store, read_only_folder):
    line = one_line_exit_2(
        runner.invoke(app, ["study", "--data-dir", str(read_only_folder / "mnist")]),
        f"{read_only_folder} is read-only",
        "train-images-idx3-ubyte",
    )
    assert "download failed" not in line
    assert not (store / "mlflow.db").exists()
