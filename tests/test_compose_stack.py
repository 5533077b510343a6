"""The compose stack, run for real (`pytest -m docker`; deselected by default, `.ci/run` runs it).

What docs/scale-out.md's compose section says, done in a copy of this checkout as a new user would:
`.env` from `.env.example`, a generated password in `secrets/postgres_password`, then
`up -d --build` with the smoke override (2 trials of 1 epoch on 3,000 images). Two workers share
the study; the MLflow REST API on 127.0.0.1:5000 must show its parent run and 2 FINISHED child
runs; no container shows the password (`docker inspect`, `docker top`, logs); `down` + `up` keeps
every run, with workers started before MLflow waiting for it; `down -v` removes the volumes. Needs a Docker engine and the base images:
`tests/docker-standins/engine.sh` starts one and builds stand-ins where Docker Hub is unreachable.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, poll

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECT = "mnist-search-e2e"
MLFLOW = "http://127.0.0.1:5000"
SMOKE = ["-f", "docker-compose.yml", "-f", "docker-compose.smoke.yml"]


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.compose = [*compose_command(), "-p", PROJECT]
        self.timings: dict[str, float] = {}

    def run(self, *args: str, timeout: float = 900) -> str:
        proc = subprocess.run([*self.compose, *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr[-3000:]}"
        return proc.stdout

    def containers(self, service: str) -> list[dict]:
        ids = self.run("ps", "-q", service).split()
        if not ids:
            return []
        return json.loads(docker("inspect", *ids))

    def all_containers(self) -> list[dict]:
        return [c for service in ("postgres", "mlflow", "worker") for c in self.containers(service)]

    def workers_done(self, count: int) -> list[dict] | None:
        """The `count` worker containers once all have exited, else None."""
        workers = self.containers("worker")
        if len(workers) == count and all(w["State"]["Status"] == "exited" for w in workers):
            return workers
        return None


def docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def logs(container_id: str) -> str:
    """A container's output, stdout and stderr together."""
    proc = subprocess.run(
        ["docker", "logs", container_id], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def checkout_copy(dest: Path) -> Path:
    """This checkout's files as a fresh clone would have them, plus uncommitted work."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory, data_dir):
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("no Docker engine answers; start one with tests/docker-standins/engine.sh")
    if not port_is_free(5000):
        pytest.fail("127.0.0.1:5000 is taken; the stack publishes MLflow there")
    root = checkout_copy(tmp_path_factory.mktemp("clone"))
    # The steps of docs/scale-out.md: .env from the example (MNIST_DIR pointed at the data), a password file.
    env = (root / ".env.example").read_text() + f"\nMNIST_DIR={Path(data_dir).resolve()}\n"
    (root / ".env").write_text(env)
    (root / "secrets").mkdir()
    password = subprocess.run(["python3", "-c", "import secrets; print(secrets.token_urlsafe(24))"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (root / "secrets" / "postgres_password").write_text(password + "\n")
    stack = Stack(root)
    stack.password = password
    try:
        start = time.monotonic()
        stack.run(*SMOKE, "build", timeout=1800)
        stack.timings["build (s)"] = time.monotonic() - start
        start = time.monotonic()
        stack.run(*SMOKE, "up", "-d", timeout=900)
        stack.up_started = start
        stack.up_wall = time.time()
        yield stack
    finally:
        logs = subprocess.run(
            [*stack.compose, "logs", "--no-color"], cwd=root, capture_output=True, text=True, check=False
        )
        (root / "stack.log").write_text(logs.stdout + logs.stderr)
        subprocess.run(
            [*stack.compose, *SMOKE, "down", "-v"], cwd=root, capture_output=True, timeout=300, check=False
        )
        print("compose stack figures:", json.dumps({k: round(v, 1) for k, v in stack.timings.items()}))


def mlflow_runs(client, experiment: str) -> tuple[object, list]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on {MLFLOW}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_two_workers_share_the_smoke_study_and_mlflow_shows_every_run(stack):
    import mlflow

    workers = poll(lambda: stack.workers_done(2), "both workers to finish", timeout=900, every=2)
    stack.timings["up to both workers done (s)"] = time.monotonic() - stack.up_started
    for w in workers:
        assert w["State"]["ExitCode"] == 0, logs(w["Id"])[-2000:]
        env = dict(item.split("=", 1) for item in w["Config"]["Env"])
        assert env["MNIST_SEARCH_THREADS"] == "1"  # one torch thread per worker
    client = mlflow.MlflowClient(MLFLOW)
    parent, children = mlflow_runs(client, "mnist-search-studies")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["trial_number"] for c in children}) == 2
    assert parent.data.tags["study_name"] == "smoke"  # its own study, not the real search's
    first = min(c.info.end_time for c in children) / 1000
    stack.timings["up to the first finished trial (s)"] = first - stack.up_wall
    # Each worker trained one trial: their logs name different trials (the study was shared).
    outputs = [logs(w["Id"]) for w in workers]
    assert all("trial" in text for text in outputs)
    # No MLflow git warnings (there is no git in the image).
    assert not any("Git" in text for text in outputs), outputs
    stack.children = sorted(c.info.run_id for c in children)


def test_the_password_is_on_no_command_line_environment_or_log(stack):
    for container in stack.all_containers():
        assert stack.password not in json.dumps(container), container["Name"]
        if container["State"]["Running"]:
            assert stack.password not in docker("top", container["Id"], "-eo", "pid,args")
        assert stack.password not in logs(container["Id"])


def test_the_build_context_sends_no_secrets_or_data(stack):
    """What `docker build` sends of this folder (.dockerignore applied), listed from inside an image."""
    probe = "FROM python:3.11-slim\nCOPY . /context\nRUN find /context -maxdepth 1 | sort\n"
    proc = subprocess.run(
        ["docker", "build", "--no-cache", "-f", "-", "."],
        input=probe, cwd=stack.root, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sent = {
        line.removeprefix("/context/") for line in proc.stdout.splitlines() if line.startswith("/context/")
    }
    assert {"pyproject.toml", "mnist_search", "Dockerfile"} <= sent
    assert not sent & {".env", "secrets", ".git", "data", "mlruns", "tests"}, sorted(sent)
    image = proc.stdout.strip().splitlines()[-1].split()[-1]  # "Successfully built ID"
    subprocess.run(["docker", "rmi", image], capture_output=True, check=False)


def test_down_and_up_keep_every_run_and_workers_wait_for_a_late_mlflow(stack):
    import mlflow

    stack.run(*SMOKE, "down")
    # Workers started while MLflow is down (as after a crash, or a slow first start): they wait.
    stack.run(*SMOKE, "up", "-d", "--no-deps", "postgres", "worker")
    waiting = poll(
        lambda: all("waiting up to 300 s" in logs(w["Id"]) for w in stack.containers("worker")) or None,
        "the workers to wait for MLflow",
        timeout=300,
        every=2,
    )
    assert waiting and all(w["State"]["Running"] for w in stack.containers("worker"))
    stack.run(*SMOKE, "up", "-d")
    workers = poll(lambda: stack.workers_done(2), "workers to find the study complete", timeout=600, every=2)
    for w in workers:
        assert w["State"]["ExitCode"] == 0 and w["RestartCount"] == 0, logs(w["Id"])[-2000:]
    client = mlflow.MlflowClient(MLFLOW)
    _, children = mlflow_runs(client, "mnist-search-studies")
    assert sorted(c.info.run_id for c in children) == stack.children  # kept, none added


def test_down_v_removes_the_volumes(stack):
    stack.run(*SMOKE, "down", "-v")
    volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}")
    assert volumes.split() == []
