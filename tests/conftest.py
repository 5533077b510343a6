"""Shared fixtures: the real MNIST files, a temporary local store, a real MLflow tracking server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
# `study` runs one worker process per core by default; the tests' studies are seconds long, where
# starting workers would dominate, so they run in-process unless a test asks for workers (its
# own --jobs, or test_cli's check of the default).
os.environ["MNIST_SEARCH_JOBS"] = "1"
# Likewise a study's end-of-study verify (3 seeds of the best trial) would double each study's
# seconds: the tests that check it ask for it (`--verify`).
os.environ["MNIST_SEARCH_VERIFY"] = "0"
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("MNIST_SEARCH_DATA_DIR", REPO.parent / "shared" / "datasets" / "mnist"))
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {path}/MNIST/raw; set MNIST_SEARCH_DATA_DIR")
    return path.resolve()


@pytest.fixture(scope="session")
def mnist(data_dir):
    from mnist_search.core.data import load_mnist

    return load_mnist(data_dir)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A fresh local store (the embedded default) for one test; no tracking URI from outside."""
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "mlruns"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def start_server_process(cmd: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    """A server in its own process group, once `ready_url` answers 200; its log on failure."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(ready_url, proc)
    except Exception:  # noqa: BLE001 - any failure: stop the server, show its log
        stop_server(proc, signal.SIGKILL)
        raise RuntimeError(f"{cmd[0]} did not start; see {log}:\n{log.read_text()[-2000:]}") from None
    return proc


def start_mlflow_server(
    backend: str, artifacts: Path, log: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # Its own process group: `mlflow server` serves from uvicorn child processes, and stopping
    # the server means stopping all of them.
    uri = f"http://127.0.0.1:{port}"
    return start_server_process(cmd, uri + "/health", log), uri


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group and reap it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` over HTTP on a free loopback port, SQLite-backed."""
    root = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = start_mlflow_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log"
    )
    yield uri
    stop_server(proc)


# --- the CLI, in process and as real processes ----------------------------------------------------

runner = CliRunner()

# A tiny search space: trials of a few seconds on a few thousand images.
TINY = """\
search:
  stages: [[{low: 4, high: 8}, {low: 4, high: 8}], [{low: 4, high: 8}]]
  transitions: [{low: 4, high: 8}]
recipe: {epochs: 2, optimizer: adam, lr: 0.01, batch_size: 64}
pruner: {kind: none}
"""
SECRET = "s3cret-pw"


def one_line_exit_2(result, *fragments) -> str:
    """A CliRunner result that is exactly one `error: ...` line on stderr, exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def study_args(data_dir, trials) -> list[str]:
    """The default search, shrunk to seconds: 1 epoch on 3,000 images, one seed per trial (its
    3 packed seeds are test_packed's subject; here they would only triple the training)."""
    return ["study", "--budget", "8000", "--trials", str(trials), "--epochs", "1", "--seeds", "1",
            "--limit-train", "3000", "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--no-verify"]  # fmt: skip


def start_cli(args, tmp_path, sigint=signal.SIG_DFL) -> subprocess.Popen:
    """`mnist-search ARGS` as a real process with its local store in tmp_path/mlruns."""
    env = os.environ | {"MNIST_SEARCH_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    # Default SIGINT in the child, as in a terminal (a shell's background jobs inherit it
    # ignored: `sigint=signal.SIG_IGN` starts it so).
    return subprocess.Popen([sys.executable, "-m", "mnist_search", *args], env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),  # noqa: PLW1509
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def local_client(store: Path):
    """An MlflowClient on an existing local store's SQLite database. Its first touch takes the
    store's lock, as mnist-search does, so a test never creates the schema under a running command."""
    import mlflow
    from filelock import FileLock

    db = store / "mlflow.db"
    if not db.exists():
        raise FileNotFoundError(db)
    with FileLock(f"{db}.lock"):
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
        client.search_experiments(max_results=1)
    return client


def runs_of(client, experiment: str, kind: str | None = None, **search) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    where = f"tags.kind = '{kind}'" if kind else ""
    return client.search_runs([exp.experiment_id], filter_string=where, max_results=1000, **search)


def poll(probe, what: str, timeout: float = 300, every: float = 0.5):
    """probe() until it returns something other than None; its errors count as 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(every)
        try:
            found = probe()
        except Exception:  # noqa: BLE001 - a store being created or written: try again
            found = None
        if found is not None:
            return found
    raise TimeoutError(what)


@contextmanager
def store_with_default_study(root: Path, data_dir, trials: int):
    """A local store in `root` holding the default search with `trials` trained trials (1 epoch,
    3,000 images), made once for a test module; the environment points at it while in use."""
    from mnist_search.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_SEARCH_STORE", str(root / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        result = runner.invoke(app, study_args(data_dir, trials))
        assert result.exit_code == 0, result.output
        assert f"{trials}/{trials} trials done" in result.output
        yield root


def tiny_trained_study(tmp_path, data_dir) -> list[str]:
    """Study tiny-b8000 with one trained trial in the local store; returns the common CLI args."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    common = ["--data-dir", str(data_dir), "--device", "cpu"]
    study = start_cli(["study", "--experiment", "tiny.yaml", "--trials", "1", "--epochs", "1",
                       "--limit-train", "1000", "--quiet", *common], tmp_path)  # fmt: skip
    assert study.wait(timeout=300) == 0
    return common


# Bad experiment files and the message each must produce (the field path, then what is wrong).
BAD_YAML = {
    "malformed.yaml": ("spec: [1, 2\n", "malformed YAML"),
    "unknown.yaml": ("spec:\n  stages: [[8]]\n  widht: 3\n", "spec.widht: Extra inputs are not permitted"),
    "zero.yaml": ("spec:\n  stages: [[8, 0]]\n", "spec.stages.0.1: Input should be greater than 0"),
    "negative.yaml": ("spec:\n  stages: [[-4]]\n", "spec.stages.0.0: Input should be greater than 0"),
    "dropout.yaml": ("spec:\n  stages: [[8]]\n  dropout: 1.0\n", "spec.dropout: Input should be less than 1"),
    "epochs.yaml": (
        "spec:\n  stages: [[8]]\nrecipe:\n  epochs: 0\n",
        "recipe.epochs: Input should be greater than 0",
    ),
    "list.yaml": ("- 1\n- 2\n", "expected a mapping"),
    "quoted.yaml": (
        'spec:\n  stages: [[8]]\nrecipe:\n  batch_size: "128"\n',
        "recipe.batch_size: Input should be a valid integer (got the text '128': write it without quotes)",
    ),
}


def console_script(*args: str, columns: int = 80, **env: str) -> subprocess.CompletedProcess:
    """`mnist-search ARGS` as the console script runs it, at a given terminal width."""
    return subprocess.run(
        [sys.executable, "-c", "from mnist_search.cli import main; main()", *args],
        check=False, capture_output=True, text=True, timeout=120,
        env=os.environ | {"COLUMNS": str(columns)} | env,
    )  # fmt: skip
