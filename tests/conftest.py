"""Shared fixtures: the real MNIST files, a temporary local store, a real MLflow tracking server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("MNIST_SEARCH_DATA_DIR", REPO.parent / "shared" / "datasets" / "mnist"))
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {path}/MNIST/raw; set MNIST_SEARCH_DATA_DIR")
    return path.resolve()


@pytest.fixture(scope="session")
def mnist(data_dir):
    from mnist_search.data import load_mnist

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


def start_mlflow_server(backend: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # Its own process group: `mlflow server` serves from uvicorn child processes, and stopping
    # the server means stopping all of them.
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", proc)
    except Exception:  # noqa: BLE001 - any failure: stop the server, show its log
        stop_server(proc, signal.SIGKILL)
        raise RuntimeError(f"mlflow server did not start; see {log}:\n{log.read_text()[-2000:]}") from None
    return proc, uri


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
