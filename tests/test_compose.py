"""The compose files as written (quick checks, no engine; `-m docker` runs the stack for real)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .conftest import REPO


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_only_mlflow_is_published_and_only_on_loopback():
    services = compose()["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    assert "ports" not in services["postgres"] and "ports" not in services["worker"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]


def test_mlflow_has_its_own_image_few_server_processes_and_a_start_period():
    mlflow = compose()["services"]["mlflow"]
    assert mlflow["build"]["dockerfile"] == "docker/mlflow.Dockerfile"
    runs = [
        line
        for line in (REPO / "docker" / "mlflow.Dockerfile").read_text().splitlines()
        if line.startswith("RUN")
    ]
    assert runs and not any("torch" in line or "mnist" in line for line in runs)
    cmd = mlflow["command"]
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "mlflow:5000" in cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert cmd[cmd.index("--workers") + 1] == "${MLFLOW_WORKERS:-2}"
    assert mlflow["healthcheck"]["start_period"] == "120s"
    assert {"pgdata", "mlartifacts", "mnist-data"} <= set(compose()["volumes"])


def test_workers_share_one_study_wait_for_services_restart_on_failure_and_take_one_thread():
    worker = compose()["services"]["worker"]
    assert worker["command"][0] == "study"
    env = worker["environment"]
    assert env["MNIST_SEARCH_STORAGE"].endswith("@postgres:5432/optuna")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MNIST_SEARCH_SERVICE_WAIT"] == "${SERVICE_WAIT:-300}"
    assert env["MNIST_SEARCH_THREADS"] == "${WORKER_THREADS:-1}"
    assert env["MNIST_SEARCH_JOBS"] == "1"  # not one process per core in every container
    assert worker["restart"] == "on-failure:5"
    assert worker["volumes"] == ["${MNIST_DIR:-mnist-data}:/data"]  # writable
    assert "CREATE DATABASE optuna" in (REPO / "docker" / "optuna-db.sql").read_text()


def test_the_password_is_a_secret_file_never_a_variable_or_in_a_url():
    files = ["docker-compose.yml", "docker-compose.smoke.yml", "docker-compose.gpu.yml", ".env.example"]
    for name in files:
        text = (REPO / name).read_text()
        assert "POSTGRES_PASSWORD}" not in text and "POSTGRES_PASSWORD:" not in text, name
        assert "POSTGRES_PASSWORD=" not in text, name
    spec = compose()
    assert spec["secrets"]["postgres_password"]["file"].endswith("./secrets/postgres_password}")
    for name, service in spec["services"].items():
        assert service["secrets"] == ["postgres_password"], name
        assert service["environment"].get("POSTGRES_PASSWORD_FILE") == "/run/secrets/postgres_password", name
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "secrets/" in ignored


def test_the_build_context_holds_no_secrets_data_or_history():
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".env", "secrets/", ".git/", "data/", "mlruns/"} <= set(ignored)


def test_smoke_and_gpu_overrides():
    cmd = compose("docker-compose.smoke.yml")["services"]["worker"]["command"]
    assert cmd[cmd.index("--trials") + 1] == "2" and cmd[cmd.index("--epochs") + 1] == "1"
    devices = compose("docker-compose.gpu.yml")["services"]["worker"]["deploy"]["resources"]["reservations"]
    assert devices["devices"][0]["capabilities"] == ["gpu"]


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed (CI installs it)"
)
@pytest.mark.parametrize("override", [None, "docker-compose.smoke.yml", "docker-compose.gpu.yml"])
def test_docker_compose_config_accepts_the_files(override):
    files = ["-f", "docker-compose.yml"] + (["-f", override] if override else [])
    proc = subprocess.run(
        ["docker-compose", *files, "--env-file", ".env.example", "config", "--quiet"],
        check=False, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
