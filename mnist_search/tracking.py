"""MLflow: where runs go, what a training run logs, and how names and secrets are written.

The embedded default is a local store under `mlruns/` (override with MNIST_SEARCH_STORE): a SQLite
database `mlruns/mlflow.db` plus artifacts under `mlruns/artifacts/` (MLflow 3 rejects a plain
file store). `--tracking-uri` or MLFLOW_TRACKING_URI points at a tracking server instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from filelock import FileLock
from mlflow.models import infer_signature

from .config import ArchSpec, Recipe
from .model import count_params, layer_table, mult_adds, receptive_field_table
from .train import EpochResult, FitResult

TARGET = 0.994  # the task: >= 99.4 % test accuracy ...
DEFAULT_BUDGET = 8_000  # ... with fewer than this many parameters


class TrackingError(Exception):
    """The tracking server cannot be reached or refused us; one line for the user."""


def store_dir() -> Path:
    return Path(os.environ.get("MNIST_SEARCH_STORE") or "mlruns").resolve()


def resolve_tracking_uri(uri: str | None, create: bool = True) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else the local SQLite store under mlruns/."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    store = store_dir()
    if create:
        store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


# What a tracking server that went away raises through the MLflow client.
TRACKING_FAILURES = (mlflow.exceptions.MlflowException, OSError)


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return mask_url(text)[:200]


def mask_url(url: str) -> str:
    """Hide the password in scheme://user:password@host URLs (storage and tracking URIs)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of retries) when an HTTP tracking server is unreachable."""
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    bare = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    request = urllib.request.Request(urllib.parse.urlunsplit(bare).rstrip("/") + "/health")
    if parts.username:  # user:password@ in the URI: HTTP basic auth, as MLflow's client sends it
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"tracking server {mask_url(uri)} answered HTTP {resp.status}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking server {mask_url(uri)} is unreachable ({reason})") from None


def setup(tracking_uri: str | None, experiment_name: str) -> str:
    """Point MLflow at the store and select (creating if needed) the experiment; returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    # Opening a fresh SQLite store creates its schema; two processes starting together would
    # both try ("table ... already exists"). Serialise that first touch.
    sqlite = uri.startswith("sqlite:")
    with FileLock(uri.removeprefix("sqlite:///") + ".lock") if sqlite else contextlib.nullcontext():
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        artifacts = None
        if sqlite:  # local store: keep artifacts beside the database
            artifacts = (store_dir() / "artifacts").as_uri()
        try:
            exp_id = client.create_experiment(experiment_name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException as exc:
            # Workers starting together race to create it: the loser uses the winner's.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = client.get_experiment_by_name(experiment_name).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def spec_params(spec: ArchSpec, recipe: Recipe) -> dict[str, str]:
    """Flat MLflow params: spec.* and recipe.* (nested lists written as their JSON form)."""
    params = {f"spec.{k}": v for k, v in spec.model_dump(mode="json").items()}
    params.update({f"recipe.{k}": v for k, v in recipe.model_dump(mode="json").items()})
    return {k: str(v) for k, v in params.items()}


def run_tags(spec: ArchSpec, budget: int, experiment_file: str | None) -> dict[str, str]:
    return {
        "params": str(count_params(spec)),
        "mult_adds": str(mult_adds(spec)),
        "budget": str(budget),
        "under_budget": str(count_params(spec) < budget).lower(),
        "target": str(TARGET),
        "experiment_file": experiment_file or "",
        "git_commit": git_commit(),
    }


def log_epoch(result: EpochResult) -> None:
    mlflow.log_metrics(result.metrics(), step=result.epoch)


def log_tables(spec: ArchSpec) -> None:
    mlflow.log_text(layer_table(spec), "summary/layers.txt")
    mlflow.log_text(receptive_field_table(spec), "summary/receptive_field.txt")


def log_outcome(fit: FitResult) -> None:
    """Final figures and the target_met tag (test acc >= 99.4 % in each of the last 3 epochs)."""
    if not fit.epochs:
        return
    mlflow.log_metrics(
        {
            "final/val_acc_last3": fit.val_score,
            "final/test_acc_min_last3": fit.test_min_last3,
            "final/test_acc": fit.epochs[-1].test_acc,
        }
    )
    mlflow.set_tag("target_met", str(fit.target_met(TARGET)).lower())


def log_model(model: torch.nn.Module) -> None:
    """The trained network with a signature: (N, 1, 28, 28) normalised float32 -> (N, 10) logits."""
    model = model.to("cpu").eval()
    example = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():
        out = model(example).numpy()
    signature = infer_signature(example.numpy().astype(np.float32), out)
    with warnings.catch_warnings():  # torch.export's "No complete tensor found" is about CUDA
        warnings.simplefilter("ignore", UserWarning)
        _log_pytorch_model(model, signature, example)


def _log_pytorch_model(model, signature, example) -> None:
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.numpy(),  # MLflow 3's default pt2 format traces with it
        # Naming the requirement skips MLflow's import-scanning subprocess (seconds per model).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )


def tracked_fit(
    spec: ArchSpec,
    data,
    recipe: Recipe,
    device: torch.device,
    *,
    epochs: int,
    seed: int,
    budget: int,
    experiment_file: str,
    run_name: str,
    tags: dict[str, str],
    on_epoch=None,
    parent_run_id: str | None = None,
) -> tuple[str, FitResult, torch.nn.Module]:
    """Build, train and log one run exactly as `train` does (params, per-epoch metrics, tables,
    outcome, checkpoint and model). NonFiniteLoss ends the run FAILED with the reason and re-raises."""
    from .model import build_model
    from .train import NonFiniteLoss, fit

    model = build_model(spec, seed=seed)
    with mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id) as run:
        mlflow.log_params(spec_params(spec, recipe) | {"seed": str(seed), "epochs": str(epochs)})
        mlflow.set_tags(run_tags(spec, budget, experiment_file) | tags)
        log_tables(spec)

        def logged(r: EpochResult) -> None:
            log_epoch(r)
            if on_epoch is not None:
                on_epoch(r)

        try:
            result = fit(model, data, recipe, device, logged, epochs=epochs, seed=seed)
        except NonFiniteLoss as exc:
            mlflow.set_tag("failure", str(exc))
            mlflow.end_run("FAILED")
            raise
        log_outcome(result)
        log_checkpoint(model)
        log_model(model)
    return run.info.run_id, result, model


# --- studies: one parent run per study, one nested child run per trained trial -------------------

PARENT_ATTR = "mlflow_parent_run_id"
PARENT_SETTLE_SECONDS = 2.0  # only paid by a worker that creates a study's parent run

END_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class StudyTracker:
    """MLflow logging of a study, written by hand (optuna-integration's MLflowCallback is
    deprecated and logs only final values).

    One parent run per study, whatever the number of invocations or workers: its id is kept in
    the study's user attributes, so a resumed study (or a second worker) nests its trials under the
    same parent. Each trained trial gets a child run (tag mlflow.parentRunId) that ends FINISHED,
    KILLED (pruned) or FAILED; over-budget proposals are never trained and get no run.
    """

    def __init__(self, study, storage_url: str, budget: int, experiment_id: str, experiment_file: str):
        self.study, self.budget = study, budget
        self.storage = mask_url(storage_url)
        self.experiment_id, self.experiment_file = experiment_id, experiment_file
        self.client = mlflow.MlflowClient()
        self.children: dict[int, str] = {}
        self._own_parent = self._parent()

    @property
    def parent_id(self) -> str:
        """Read from the study storage each time: a worker that joined while racers settled the
        parent converges on the recorded one."""
        return self.study.user_attrs.get(PARENT_ATTR) or self._own_parent

    def _parent(self) -> str:
        known = self.study.user_attrs.get(PARENT_ATTR)
        if known:
            try:
                run = self.client.get_run(known)
                if run.info.lifecycle_stage == "active":
                    try:
                        self.client.update_run(known, status="RUNNING")
                    except mlflow.exceptions.MlflowException:
                        pass  # a racer deleted it meanwhile: parent_id re-reads the winner
                    return known
            except mlflow.exceptions.MlflowException:
                pass  # the run was deleted or lives in another tracking store: start a new one
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.study.study_name,
            tags={
                "kind": "study",
                "study_name": self.study.study_name,
                "storage": self.storage,
                "budget": str(self.budget),
                "target": str(TARGET),
                "experiment_file": self.experiment_file,
                "git_commit": git_commit(),
            },
        )
        self.study.set_user_attr(PARENT_ATTR, run.info.run_id)
        # Workers started together race to create the parent. The storage has no compare-and-set
        # for user attributes, so let the racers' writes settle, then the last one written wins
        # and the others delete their run before logging anything under it.
        time.sleep(PARENT_SETTLE_SECONDS)
        winner = self.study.user_attrs.get(PARENT_ATTR, run.info.run_id)  # read from the storage
        if winner != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        return winner

    # TrialHooks -----------------------------------------------------------------------------
    def trial_started(self, trial, spec: ArchSpec, recipe: Recipe) -> None:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{self.study.study_name}-trial-{trial.number}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                "kind": "trial",
                "trial_number": str(trial.number),
                "study_name": self.study.study_name,
                "storage": self.storage,
                "state": "RUNNING",
            }
            | run_tags(spec, self.budget, self.experiment_file),
        )
        run_id = run.info.run_id
        self.children[trial.number] = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        params = spec_params(spec, recipe) | {"trial_number": str(trial.number)}
        self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
        self.client.log_text(run_id, layer_table(spec), "summary/layers.txt")
        self.client.log_text(run_id, receptive_field_table(spec), "summary/receptive_field.txt")

    def epoch_ended(self, trial, r: EpochResult) -> None:
        stamp = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(k, v, stamp, r.epoch) for k, v in r.metrics().items()]
        self.client.log_batch(self.children[trial.number], metrics=metrics)

    def trial_ended(self, record, model) -> None:
        # Popped only once closed: if an interrupt lands mid-way, finish() still closes the run.
        run_id = self.children.get(record.number)
        if run_id is None:  # interrupted before its run was created: nothing to close
            return
        self.client.set_tag(run_id, "state", record.state)
        if record.reason:
            self.client.set_tag(
                run_id, "failure" if record.state == "FAIL" else "pruned_reason", record.reason
            )
        fit_result = record.result
        if fit_result.epochs:
            self.client.set_tag(run_id, "target_met", str(fit_result.target_met(TARGET)).lower())
            self.client.log_batch(
                run_id,
                metrics=[
                    mlflow.entities.Metric("final/val_acc_last3", fit_result.val_score, 0, 0),
                    mlflow.entities.Metric("final/test_acc_min_last3", fit_result.test_min_last3, 0, 0),
                    mlflow.entities.Metric("final/seconds", record.seconds, 0, 0),
                ],
            )
        if model is not None:
            with mlflow.start_run(run_id=run_id):
                log_checkpoint(model)
                log_model(model)
        self.client.set_terminated(run_id, END_STATUS[record.state])
        del self.children[record.number]

    # End of an invocation -------------------------------------------------------------------
    def close_open_children(self, status: str = "KILLED") -> None:
        for run_id in self.children.values():
            self.client.set_tag(run_id, "state", "FAIL")
            self.client.set_terminated(run_id, status)
        self.children.clear()

    def finish(self, status: str = "FINISHED") -> None:
        """Summarise the whole study (all invocations) on the parent run and close it."""
        from .plots import study_figures
        from .search import feasible_share, leaderboard

        self.close_open_children()
        rows = leaderboard(self.study)
        feasible, proposed = feasible_share(self.study)
        done = [r for r in rows if r["state"] == "COMPLETE"]
        metrics = {
            "study/trials_trained": len(rows),
            "study/trials_completed": len(done),
            "study/trials_pruned": sum(r["state"] == "PRUNED" for r in rows),
            "study/trials_failed": sum(r["state"] == "FAIL" for r in rows),
            "study/trials_target_met": sum(bool(r["target_met"]) for r in rows),
            "study/proposals": proposed,
            "study/feasible_share": feasible / proposed if proposed else 0.0,
        }
        if done:
            best = done[0]
            metrics |= {
                "best/val_acc": best["val_acc"],
                "best/params": best["params"],
                "best/trial": best["trial"],
            }
            if best["test_acc_min_last3"] is not None:
                metrics["best/test_acc_min_last3"] = best["test_acc_min_last3"]
            self.client.set_tag(self.parent_id, "best_trial", str(best["trial"]))
            self.client.set_tag(self.parent_id, "best_spec", str(best["spec"]))
            if best.get("mlflow_run_id"):
                self.client.set_tag(self.parent_id, "best_run_id", best["mlflow_run_id"])
        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_id,
            metrics=[mlflow.entities.Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
        )
        for path, fig in study_figures(self.study, self.budget).items():
            self.client.log_figure(self.parent_id, fig, path)
            fig.clear()
        self.client.set_terminated(self.parent_id, status)


def log_checkpoint(model: torch.nn.Module) -> None:
    """state_dict + spec YAML in the active run, so `export` can rebuild the exact network."""
    import io
    import tempfile

    from .config import spec_to_yaml

    with tempfile.TemporaryDirectory() as tmp:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        (Path(tmp) / "state_dict.pt").write_bytes(buf.getvalue())
        (Path(tmp) / "spec.yaml").write_text(spec_to_yaml(model.spec))
        mlflow.log_artifacts(tmp, "checkpoint")
