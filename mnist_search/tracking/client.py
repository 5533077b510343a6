"""MLflow, through one API style: the explicit `MlflowClient` and run ids, never an implicit
active run (the one exception is `RunLog.model`, see there).

`tracking_target()` resolves and checks the tracking URI once, before anything is written, and
its `open()` connects and selects the experiment; `RunLog` writes one
run's pieces (params, metrics, tags, tables, checkpoint, model); `sink.RunSink` puts them together
for a trained network. The embedded default store is a SQLite database
under `mlruns/` (see `settings`); `--tracking-uri` or MLFLOW_TRACKING_URI points at a server.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import getpass
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pydantic
import requests
import torch
import yaml
from filelock import FileLock
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.models import infer_signature

from mnist_search.core.config import TARGET, ArchSpec, Recipe, spec_to_yaml
from mnist_search.core.data import MEAN, STD, MNISTData
from mnist_search.core.diskspace import check_space
from mnist_search.core.errors import NoSpace, TrackingError
from mnist_search.core.model import (
    WithNormalisation,
    count_params,
    layer_table,
    mult_adds,
    receptive_field_table,
)
from mnist_search.core.settings import mask_url, resolve_tracking_uri, store_dir
from mnist_search.core.waiting import patiently
from mnist_search.tracking import names

# What the MLflow client raises when the tracking store fails under it (a server that went away
# surfaces as MlflowException after the client's retries, or as a requests error).
TRACKING_FAILURES = (mlflow.exceptions.MlflowException, requests.exceptions.RequestException)


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return mask_url(text)[:200]


# Tracking URIs MLflow 3 accepts that we can hand to it (a plain path or file:// is refused by it).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


# How long /health may take to answer: a server that has just started on a loaded machine takes
# seconds (a 5 s limit called such a one unreachable); one that refuses the connection fails at once.
HEALTH_TIMEOUT = 30.0


def check_tracking(uri: str, timeout: float = HEALTH_TIMEOUT, wait: float = 0.0) -> None:
    """Refuse a URI MLflow cannot use, before anything is written: a plain path, an SQLite
    database in a folder that does not exist, an HTTP server that refuses the connection or does
    not answer /health within `timeout` (not minutes of retries). `wait`: seconds to keep asking a
    server that is unreachable or answers 5xx (still starting), instead of failing at once."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise TrackingError(
            f"tracking URI {mask_url(uri)}: not one MLflow can use; give "
            "http://HOST:PORT, sqlite:///PATH/mlflow.db or postgresql://… (MLflow 3 has no plain file store)"
        )
    if scheme == "sqlite":
        db = Path(uri.split("://", 1)[1].removeprefix("/"))
        folder = db.parent.resolve()
        default = folder == store_dir()  # the local store: created on first use
        if not default and not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise TrackingError(f"tracking URI {uri}: folder {folder} does not exist or is not writable")
        return
    if scheme in ("http", "https"):
        patiently(lambda: check_health(uri, timeout), wait)


def check_health(uri: str, timeout: float) -> None:
    """An HTTP tracking server's /health answers 200 within `timeout` seconds, or TrackingError."""
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
    except urllib.error.HTTPError as exc:  # it answered: only a server error may pass with time
        raise TrackingError(
            f"tracking server {mask_url(uri)} answered HTTP {exc.code} {exc.reason}",
            transient=exc.code >= 500,
        ) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, no such host (yet), timed out
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"tracking server {mask_url(uri)} is unreachable ({reason})", transient=True
        ) from None
    except ValueError as exc:  # a malformed URI
        raise TrackingError(f"tracking URI {mask_url(uri)}: {exc}") from None


@dataclass(frozen=True)
class Tracking:
    """An open tracking store and the experiment runs go to."""

    uri: str
    experiment_id: str
    client: mlflow.MlflowClient


def runs_link(tracking: Tracking) -> str:
    """Where to read the runs in MLflow's UI: the experiment's runs table in the Model training
    view (MLflow 3.17's UI otherwise opens on GenAI). A local store needs a UI started on it."""
    page = f"#/experiments/{tracking.experiment_id}/runs?workflowType=machine_learning"
    parts = urllib.parse.urlsplit(tracking.uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host  # no credentials in a printed link
        netloc += f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/{page}"
    if parts.scheme == "sqlite":
        return f"http://127.0.0.1:5000/{page} (after: mlflow ui --backend-store-uri {tracking.uri})"
    return ""


# MLflow 3 opens an experiment without a kind on its GenAI overview (traces, latency, tokens);
# this kind opens it on its runs table. The note is the experiment's description in the UI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs will go: a tracking URI resolved (the option, $MLFLOW_TRACKING_URI, else the
    local store) and checked, once, before anything is written (`tracking_target`). `open()`
    connects when the command starts writing."""

    uri: str

    def open(self, experiment_name: str, description: str = "") -> Tracking:
        if self.uri == resolve_tracking_uri(None, create=False) and self.uri.startswith("sqlite:"):
            resolve_tracking_uri(None, create=True)  # the local store's folder, on first use
        return _connect(self.uri, experiment_name, description)


def tracking_target(tracking_uri: str | None, wait: float = 0.0) -> TrackingTarget:
    """Resolve and check the tracking URI (see `check_tracking`; `wait`: seconds of patience)."""
    uri = resolve_tracking_uri(tracking_uri, create=False)
    check_tracking(uri, wait=wait)
    return TrackingTarget(uri)


def open_session(tracking_uri: str | None, experiment_name: str, description: str = "") -> Tracking:
    """Resolve, check and open in one step, for a command with nothing to check in between."""
    return tracking_target(tracking_uri).open(experiment_name, description)


def _connect(uri: str, experiment_name: str, description: str) -> Tracking:
    """Open the store at a checked `uri`, and select (creating if needed) the experiment, marked
    as model development (so the UI opens on its runs) with `description`."""
    # Model logging and artifact downloads go through MLflow's module-level functions, which
    # read the process-wide URI.
    mlflow.set_tracking_uri(uri)
    # Opening a fresh SQLite store (the client does, when created) creates its schema; two
    # processes starting together would both try ("table ... already exists"). Serialise that.
    sqlite = uri.startswith("sqlite:")
    db = Path(uri.removeprefix("sqlite:///")) if sqlite else None
    # A read-only store (`export` reading a mounted one) creates nothing and takes no lock.
    locked = sqlite and (not db.parent.exists() or os.access(db.parent, os.W_OK))
    with FileLock(f"{db}.lock") if locked else contextlib.nullcontext():
        if sqlite and not db.exists():
            create_sqlite_store(db)
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment_name)
        except Exception as exc:
            if not sqlite:
                raise
            raise TrackingError(
                f"{db}: not a readable MLflow database ({short_reason(exc)}); move it aside to start a "
                f"new store (mv {db} {db}.bad), or point --tracking-uri at a good one"
            ) from None
    tags = EXPERIMENT_KIND | ({"mlflow.note.content": description} if description else {})
    if exp is not None:
        for key, value in tags.items():  # an experiment made by an older release: mark it now
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return Tracking(uri, exp.experiment_id, client)
    artifacts = (store_dir() / "artifacts").as_uri() if sqlite else None  # local: beside the db
    try:
        exp_id = client.create_experiment(experiment_name, artifact_location=artifacts, tags=tags)
    except mlflow.exceptions.MlflowException as exc:
        # Workers starting together race to create it: the loser uses the winner's.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp_id = client.get_experiment_by_name(experiment_name).experiment_id
    return Tracking(uri, exp_id, client)


def create_sqlite_store(db: Path) -> None:
    """A new MLflow SQLite database at `db`, made whole or not at all: its schema is built in a
    file beside it that is renamed into place when complete, so a disk that fills mid-way (or an
    interrupt) leaves no half-built database for the next command to trip over."""
    check_space(db.parent, "a new MLflow store")
    db.parent.mkdir(parents=True, exist_ok=True)
    # A name never used before: MLflow keeps a store per URI for the life of the process.
    building = db.with_name(f"{db.name}.building-{os.getpid()}-{time.monotonic_ns()}")
    try:
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)
        os.replace(building, db)
    except BaseException as exc:
        for leftover in db.parent.glob(f"{building.name}*"):  # the file and its -journal
            leftover.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise  # an interrupt: nothing is left behind
        if "disk is full" in str(exc):
            raise NoSpace(
                f"{db.parent}: the disk filled while creating the MLflow store; free some space"
            ) from None
        raise TrackingError(f"{db}: cannot create the MLflow store ({short_reason(exc)})") from None


@functools.cache
def git_commit() -> str | None:
    """The commit of the mnist-search source that runs, when it runs from a git checkout (an
    editable install, PYTHONPATH); None when installed from a wheel. Never the repository of the
    current directory: a user's own project says nothing about this code."""
    package = Path(__file__).resolve().parent.parent  # mnist_search/
    try:
        top = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return top[1] if len(top) == 2 and Path(top[0]).resolve() == package.parent else None


@functools.cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist-search")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
        return "unknown"


def spec_params(spec: ArchSpec, recipe: Recipe) -> dict[str, str]:
    """Flat MLflow params: spec.* and recipe.* (nested lists written as their JSON form)."""
    params = {f"spec.{k}": v for k, v in spec.model_dump(mode="json").items()}
    params.update({f"recipe.{k}": v for k, v in recipe.model_dump(mode="json").items()})
    return {k: str(v) for k, v in params.items()}


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own source and user tags (the runs table's Source and User columns), and what ran:
    the mnist-search version, and its commit when it runs from a checkout."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (`docker run --user 1234`)
        user = str(os.getuid())
    commit = git_commit()
    return {
        "mlflow.source.name": f"mnist-search {command}",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user,
        "mnist_search_version": package_version(),
    } | ({"git_commit": commit, "mlflow.source.git.commit": commit} if commit else {})


def run_tags(spec: ArchSpec, budget: int, experiment_file: str | None) -> dict[str, str]:
    return {
        "params": str(count_params(spec)),
        "arch": spec.outline(),  # the runs table's architecture column
        "mult_adds": str(mult_adds(spec)),
        "budget": str(budget),
        "under_budget": str(count_params(spec) < budget).lower(),
        "target": str(TARGET),
        "experiment_file": experiment_file or "",
    }


@contextlib.contextmanager
def _errors_only(name: str):
    """Within the block, the named logger reports errors only."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def concurrent_write_lost(exc: BaseException) -> bool:
    """An MLflow write that lost a race with the same write from another worker: the stores'
    insert-or-update of a tag, metric or alias is a read then an insert, so two at once give the
    loser a unique-key violation (SQLite "UNIQUE constraint failed", PostgreSQL "duplicate key"),
    directly or through a tracking server."""
    text = str(exc).lower()
    return isinstance(exc, mlflow.exceptions.MlflowException) and (
        "unique constraint" in text or "duplicate key" in text
    )


def race_tolerant(write, *args, attempts: int = 4, **kwargs):
    """`write(*args, **kwargs)`, retried when it lost a race with a twin write (by then the row
    exists, and the retry updates it); anything else is raised at once."""
    for attempt in range(attempts):
        try:
            return write(*args, **kwargs)
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts - 1 or not concurrent_write_lost(exc):
                raise
            time.sleep(0.2 * (attempt + 1))


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class RunLog:
    """Everything one run logs, by run id."""

    client: mlflow.MlflowClient
    run_id: str

    def params(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        stamp = _now_ms()
        metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
        race_tolerant(self.client.log_batch, self.run_id, metrics=metrics)

    def tags(self, values: dict[str, str]) -> None:
        """Tags that several workers may write at once (a study's parent run): race-tolerant."""
        for key, value in values.items():
            race_tolerant(self.client.set_tag, self.run_id, key, value)

    def sizes(self, spec: ArchSpec) -> None:
        """Parameters and mult-adds as metrics: MLflow's scatter and parallel-coordinates plots
        offer metrics and numeric params, never tags."""
        self.metrics({names.PARAMS: count_params(spec), names.MULT_ADDS: mult_adds(spec)})

    def dataset(self, data: MNISTData, context: str) -> None:
        """MNIST as the run's dataset input: its files' digest, folder and split sizes."""
        if data.source is None:
            return
        profile = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
        dataset = Dataset(
            name="mnist", digest=data.source.digest, source_type="local", source=data.source.folder,
            profile=json.dumps(profile),
        )  # fmt: skip
        tags = [InputTag("mlflow.data.context", context)]
        # Workers logging the same (new) dataset at once: its insert is not idempotent (a
        # unique-key violation for the loser). Once it exists, linking works.
        race_tolerant(self.client.log_inputs, self.run_id, datasets=[DatasetInput(dataset, tags)])

    def tables(self, spec: ArchSpec) -> None:
        self.client.log_text(self.run_id, layer_table(spec), "summary/layers.txt")
        self.client.log_text(self.run_id, receptive_field_table(spec), "summary/receptive_field.txt")

    def checkpoint(self, model: torch.nn.Module) -> None:
        """state_dict + spec YAML, so `export` can rebuild the exact network."""
        with tempfile.TemporaryDirectory() as tmp:
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            (Path(tmp) / "state_dict.pt").write_bytes(buf.getvalue())
            (Path(tmp) / "spec.yaml").write_text(spec_to_yaml(model.spec))
            self.client.log_artifacts(self.run_id, tmp, "checkpoint")

    def model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The trained network as every model we hand out: raw pixels in [0, 1], (N, 1, 28, 28)
        float32 -> (N, 10) logits, normalisation inside; `example` (real digits) is its input example.

        Saved as a pickle with this package beside it (`code_paths`), not as MLflow 3's default
        torch.export program: a pt2 program holds its weights' device, and MLflow refuses to load
        CPU weights on a machine with a GPU (seen on an H200), while the pickle loads anywhere and
        moves to the GPU there. `export` still writes a pt2 program (`model.pt2`) for serving.

        `mlflow.pytorch.log_model` has no run-id argument: it logs into the active run, so this is
        the one place that activates one (and leaves it when done; the caller ends the run)."""
        model = WithNormalisation(model.to("cpu"), MEAN, STD).eval()
        example = example.to("cpu", torch.float32)
        with torch.no_grad():
            out = model(example).numpy()
        signature = infer_signature(example.numpy(), out)
        # MLflow warns at every pickled model that unpickling runs code: the choice is made above,
        # on purpose, and the warning would be a line per trial on the user's console.
        with warnings.catch_warnings(), mlflow.start_run(run_id=self.run_id), _errors_only("mlflow.pytorch"):
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example.numpy(),
                serialization_format="pickle",
                code_paths=[str(Path(__file__).parents[1])],  # the package: the classes the pickle names
                # Naming the requirements skips MLflow's import-scanning subprocess (seconds per model);
                # the packaged code needs pydantic and PyYAML beside torch.
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"pydantic=={pydantic.VERSION}",
                    f"pyyaml=={yaml.__version__}",
                ],
            )

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def server_command(
    backend: str | None, artifacts: str | None, host: str, port: int, allowed_hosts: str | None
) -> tuple[list[str], str]:
    """`mlflow server --serve-artifacts` on the local store by default: (argv, backend URI).

    The server checks Host headers: by default it accepts localhost, 127.0.0.1 and this
    machine's name, each with and without the port."""
    store = store_dir()
    backend = backend or f"sqlite:///{store / 'mlflow.db'}"
    if backend.startswith("sqlite:"):
        store.mkdir(parents=True, exist_ok=True)
    hosts = allowed_hosts or ",".join(
        f"{h}{p}" for h in ("localhost", "127.0.0.1", socket.gethostname()) for p in ("", f":{port}")
    )
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", artifacts or str(store / "artifacts"), "--host", host, "--port", str(port),
            "--allowed-hosts", hosts]  # fmt: skip
    return argv, backend
