"""The package as a user installs it: a built wheel (not the editable checkout) in a fresh virtual
environment runs the main command from an unrelated folder, finding its shipped experiments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO, local_client, runs_of

pytestmark = pytest.mark.slow


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=600, **kwargs
    )


def test_a_built_wheel_runs_the_main_command_from_an_unrelated_folder(tmp_path, data_dir):
    # Built from a copy of the sources, so the checkout gets no build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "mnist_search", "experiments"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = run([*pip_wheel, "-w", tmp_path / "dist", source])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mnist_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        f"mnist_search/experiments/{n}.yaml"
        for n in ("budget-8k", "budget-5k", "seed-model-1", "_search-base")
    } <= set(names)

    # A fresh environment: its own site-packages holds the wheel; torch, MLflow & co. come from the
    # system site-packages (installing them again would take minutes and prove nothing here).
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--system-site-packages", venv]).returncode == 0
    installed = run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_SEARCH_STORE", "MLFLOW_TRACKING_URI")}
    env["MNIST_SEARCH_DATA_DIR"] = str(data_dir)
    where = run(
        [venv / "bin" / "python", "-c", "import mnist_search; print(mnist_search.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's copy, not the checkout
    study = run(
        [venv / "bin" / "mnist-search", "study", "--budget", "8000", "--trials", "1", "--epochs", "1",
         "--limit-train", "1000", "--device", "cpu", "--quiet"],
        cwd=elsewhere, env=env,
    )  # fmt: skip
    assert study.returncode == 0, study.stderr[-2000:]
    assert "study budget-8k-b8000: 1/1 trials done" in study.stdout
    assert (elsewhere / "mlruns" / "mlflow.db").is_file()
    # Its runs name the installed version, and no commit: a wheel is not a checkout.
    client = local_client(elsewhere / "mlruns")
    trial_runs = runs_of(client, "mnist-search-studies")
    assert trial_runs and all("mnist_search_version" in r.data.tags for r in trial_runs)
    assert not [r for r in trial_runs if "git_commit" in r.data.tags]
    named = run([venv / "bin" / "mnist-search", "summary", "seed-model-1"], cwd=elsewhere, env=env)
    assert named.returncode == 1 and "Total params: 14,620" in named.stdout  # over the default budget
