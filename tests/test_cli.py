"""The CLI as a user meets it: summary, train into MLflow over HTTP, and clear errors."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import mlflow
import pytest

from mnist_search.cli import app

from .conftest import BAD_YAML, EXPERIMENTS, TINY, console_script, local_client, runner


def test_summary_prints_the_seed_table_and_budget_verdict():
    result = runner.invoke(app, ["summary", str(EXPERIMENTS / "seed-model-1.yaml")])
    assert result.exit_code == 1, result.output  # over the budget: a verdict scripts can test
    assert "Total params: 14,620" in result.output
    assert "Conv2d-19" in result.output and "[-1, 10, 1, 1]" in result.output
    assert "28x28" in result.output  # final receptive field
    assert "Mult-adds per image: 2,687,476" in result.output
    assert "OVER the budget of 8,000" in result.output
    ok = runner.invoke(app, ["summary", str(EXPERIMENTS / "seed-model-3.yaml"), "--budget", "4000"])
    assert ok.exit_code == 0 and "3,928 — under the budget of 4,000" in ok.output


@pytest.mark.slow
def test_train_logs_metrics_tables_and_model_to_a_real_tracking_server(mlflow_server, data_dir, tmp_path):
    args = [
        "train", str(EXPERIMENTS / "seed-model-2.yaml"), "--epochs", "2", "--limit-train", "3000",
        "--data-dir", str(data_dir), "--tracking-uri", mlflow_server, "--experiment-name", "cli-train",
        "--device", "cpu",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("cli-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.stages"] == "[[8, 16, 24], [16, 24]]"
    assert run.data.params["recipe.lr"] == "0.01"
    assert run.data.tags["params"] == "14796" and run.data.tags["target"] == "0.994"
    assert run.data.tags["target_met"] == "false"  # 2 epochs cannot hold 99.4 % for 3 epochs
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [1, 2]
    assert all(0.6 < m.value <= 1.0 for m in history), history  # chance is 0.1
    for key in ("train/loss", "train/acc", "test/loss", "test/acc", "lr", "epoch_seconds"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/summary/layers.txt")
    assert "Total params: 14,796" in text
    rf = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/summary/receptive_field.txt")
    assert "r_out" in rf
    mlflow.set_tracking_uri(mlflow_server)
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    loaded = mlflow.pytorch.load_model(models[0].model_uri)
    import torch

    assert loaded(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_train_defaults_to_the_local_store_under_mlruns(store, data_dir):
    args = ["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--epochs", "1", "--limit-train", "500",
            "--data-dir", str(data_dir)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (store / "mlflow.db").is_file()
    assert list((store / "artifacts").rglob("layers.txt"))
    # The last line says where to read the run: a UI on this store, opened on its runs table.
    exp_id = local_client(store).get_experiment_by_name("mnist-search-train").experiment_id
    assert result.stdout.rstrip().splitlines()[-1] == (
        f"MLflow: http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning "
        f"(after: mlflow ui --backend-store-uri sqlite:///{store / 'mlflow.db'})"
    )


@pytest.mark.parametrize("name", sorted(BAD_YAML))
@pytest.mark.parametrize("command", ["summary", "train"])
def test_bad_experiment_files_exit_2_with_one_line(name, command, tmp_path, store):
    text, message = BAD_YAML[name]
    path = tmp_path / name
    path.write_text(text)
    result = runner.invoke(app, [command, str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not store.exists()  # nothing written to the store


def test_missing_file_and_bad_device_exit_2(tmp_path, store):
    result = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml: experiment file not found" in result.stderr
    result = runner.invoke(app, ["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--device", "tpu"])
    assert result.exit_code == 2 and "--device tpu: unknown device" in result.stderr
    assert not store.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["study", "--budget", "0"],
            "error: Invalid value for '--budget': Input should be greater than or equal to 1",
        ),
        (
            ["study", "--budget", "-5"],
            "error: Invalid value for '--budget': Input should be greater than or equal to 1",
        ),
        (
            ["study", "--budget", "abc"],
            "error: Invalid value for '--budget': Input should be a valid integer",
        ),
        (["train", "x.yaml", "--bogus"], "error: No such option: --bogus"),
    ],
)
def test_usage_errors_from_the_console_script_are_one_line_exit_2(args, message, store):
    proc = console_script(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(message), proc.stderr
    assert not store.exists()


def test_version_completion_and_a_bare_command():
    from importlib.metadata import version

    assert console_script("--version").stdout.strip() == f"mnist-search {version('mnist-search')}"
    # The shell named, not detected: detection reads the process tree, and under `sh -c` (a
    # background job) it finds sh, for which there is no completion.
    shown = console_script("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert "_mnist_search_completion" in shown.stdout, shown.stderr
    bare = console_script()
    assert bare.stdout.startswith("Usage: mnist-search [OPTIONS] COMMAND") and bare.stderr == ""


@pytest.mark.parametrize("command", ["study", "train", "verify", "server", "export"])
def test_help_fits_80_columns_and_names_every_option_whole(command):
    help_text = console_script(command, "--help").stdout
    assert help_text.startswith(f"Usage: mnist-search {command}")
    assert max(len(line) for line in help_text.splitlines()) <= 80
    assert "…" not in help_text and "<bool>" not in help_text
    if command == "server":
        assert "--artifacts-destination" in help_text


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["--version"], ["study", "--help"], ["verify", "--help"], ["study", "--budget", "0"],
     ["train", "x.yaml", "--bogus"], ["study", "--device", "quantum"], ["verify", "--device", "tpu"],
     ["train", "seed-model-1", "--device", "gpu"], ["study", "--experiment", "budget-9k"],
     ["study", "--experiment", "seed-model-1"], ["train", "missing.yaml"], ["train", "budget-1k"],
     ["summary", "missing.yaml"], ["verify", "--recipe-from", "missing.yaml"]],
    ids=" ".join,
)  # fmt: skip
def test_help_and_usage_errors_answer_without_importing_torch_mlflow_or_optuna(args, tmp_path):
    """They took 5 s on 2 cores, 4 of them importing torch and MLflow for nothing; `benchmarks/
    cli_start.py` measures it. The modules loaded when the command exits are what is checked.
    A missing or wrong-kind experiment file is a usage error too: it is read before the imports."""
    loaded = tmp_path / "loaded.txt"
    code = (
        "import atexit, sys\n"
        "out = sys.argv.pop(1)\n"
        "atexit.register(lambda: open(out, 'w').write(' '.join(sorted(sys.modules))))\n"
        "from mnist_search.cli import main\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MNIST_SEARCH_JOBS"}  # as a user runs it
    proc = subprocess.run([sys.executable, "-c", code, str(loaded), *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip
    if not args:  # the help, on stdout, with Click's exit code for a missing command
        assert proc.returncode == 2 and proc.stdout.startswith("Usage:") and not proc.stderr
    elif args[-1] in ("--help", "--version"):
        assert proc.returncode == 0 and proc.stdout and not proc.stderr
    else:  # a usage error: one line
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    modules = set(loaded.read_text().split())
    assert "mnist_search.cli" in modules and "typer" in modules  # the command did run
    assert not modules & {"torch", "mlflow", "optuna", "torchvision", "pandas", "numpy"}


@pytest.mark.slow
def test_the_live_study_display_shows_the_running_trial_and_an_eta(tmp_path, data_dir):
    """Under a pseudo-terminal (as a user sees it), one process: `#N SIZEp 1 seed ep k/E` and an ETA."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    command = shlex.join([sys.executable, "-m", "mnist_search", "study", "--experiment", "tiny.yaml", "--trials",
                          "2", "--epochs", "3", "--limit-train", "6000", "--data-dir", str(data_dir), "--device", "cpu",
                          "--no-verify"])  # fmt: skip
    env = os.environ | {"MNIST_SEARCH_STORE": str(tmp_path / "mlruns"), "COLUMNS": "150"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(["script", "-qfec", command, str(tmp_path / "typescript")], cwd=tmp_path, env=env,
                          capture_output=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    raw = (tmp_path / "typescript").read_text(errors="replace")
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", raw).replace("\r", "\n")
    assert re.search(r"^#0 [\d,]+p +1 seed +ep [1-3]/3 ", screen, re.MULTILINE), screen[-3000:]
    assert re.search(r"^#1 [\d,]+p +1 seed +ep [1-3]/3 ", screen, re.MULTILINE), screen[-3000:]
    assert re.search(r"eta ~0:\d\d:\d\d", screen)  # the running trial's pace x the trials left


@pytest.mark.slow
def test_study_uses_one_worker_per_core_by_default_and_says_so(store, data_dir, tmp_path, monkeypatch):
    """No --jobs (and no MNIST_SEARCH_JOBS): on the CPU, one 1-thread worker process per core as
    memory allows; the first line says how many; the workers share the study to its total."""
    from mnist_search.workflows.runtime import available_cores, default_jobs

    monkeypatch.delenv("MNIST_SEARCH_JOBS")
    jobs = default_jobs("cpu")
    threads = max(1, available_cores() // jobs)
    (tmp_path / "tiny.yaml").write_text(TINY)
    result = runner.invoke(app, ["study", "--experiment", "tiny.yaml", "--trials", "2", "--epochs", "1",
                                 "--limit-train", "1000", "--data-dir", str(data_dir), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    where = (
        "on cpu"
        if jobs == 1
        else f"{jobs} worker processes, {threads} torch thread{'s' if threads > 1 else ''} each"
    )
    assert first.startswith("study tiny-b8000: 0/2 trials done; " + where + "; storage "), first
    assert 1 <= jobs <= available_cores()  # never more workers than cores
    assert "2/2 trials done" in result.stdout
