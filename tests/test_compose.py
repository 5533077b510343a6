"""The docker-compose stack as written (Docker has no engine here; CI also runs `docker-compose config`)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .conftest import REPO


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_only_mlflow_is_published_and_only_on_loopback():
    services = compose()["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    assert "ports" not in services["postgres"] and "ports" not in services["worker"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]


def test_mlflow_serves_artifacts_from_postgres_and_accepts_its_service_name():
    cmd = compose()["services"]["mlflow"]["command"]
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "mlflow:5000" in cmd[cmd.index("--allowed-hosts") + 1].split(",")
    volumes = compose()["volumes"]
    assert {"pgdata", "mlartifacts"} <= set(volumes)


def test_workers_share_one_optuna_database_and_the_tracking_server():
    cmd = compose()["services"]["worker"]["command"]
    assert cmd[0] == "study"
    assert cmd[cmd.index("--storage") + 1].endswith("@postgres:5432/optuna")
    assert cmd[cmd.index("--tracking-uri") + 1] == "http://mlflow:5000"
    assert "CREATE DATABASE optuna" in (REPO / "docker" / "optuna-db.sql").read_text()


def test_credentials_come_from_env_and_env_is_not_committed():
    text = (REPO / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "change-me" not in text
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    assert (REPO / ".env.example").is_file()


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed (CI installs it)"
)
def test_docker_compose_config_accepts_the_file():
    proc = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "config", "--quiet"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
