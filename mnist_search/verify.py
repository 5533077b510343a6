"""Verification: retrain a study's top architectures on all 60,000 training images over several
seeds and report the test accuracy per seed (final and min of the last 3 epochs), mean ± std,
and whether the 99.4 % target held in every seed. With `--jobs N`, the runs go to N worker
processes (`run_in_parallel`)."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

from .config import ArchSpec, Recipe
from .tracking import TARGET
from .train import FitResult


@dataclass
class SeedRun:
    seed: int
    run_id: str
    result: FitResult

    @property
    def final(self) -> float:
        return self.result.epochs[-1].test_acc

    @property
    def min_last3(self) -> float:
        return self.result.test_min_last3


@dataclass
class Verified:
    trial: int
    spec: ArchSpec
    recipe: Recipe
    params: int
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(r.final for r in self.runs)

    @property
    def std(self) -> float:
        return statistics.stdev(r.final for r in self.runs) if len(self.runs) > 1 else 0.0

    @property
    def held(self) -> bool:
        """Target held in every seed: test acc >= 99.4 % in each of the last 3 epochs."""
        return bool(self.runs) and all(r.result.target_met(TARGET) for r in self.runs)


def verify_table(rows: list[Verified], epochs: int) -> str:
    """Markdown: one line per architecture and seed, then mean ± std and the verdict."""
    out = [
        f"| trial | params | seed | test acc, epoch {epochs} | test acc, min of last 3 | target held |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for v in rows:
        for r in v.runs:
            out.append(
                f"| {v.trial} | {v.params:,} | {r.seed} | {r.final:.4f} | {r.min_last3:.4f} | "
                f"{'yes' if r.result.target_met(TARGET) else 'no'} |"
            )
        out.append(
            f"| **{v.trial}** | **{v.params:,}** | mean ± std | **{v.mean:.4f} ± {v.std:.4f}** | "
            f"{min(r.min_last3 for r in v.runs):.4f} (worst) | **{'yes, every seed' if v.held else 'no'}** |"
        )
    return "\n".join(out)


# --- seeds side by side (`verify --jobs N`) --------------------------------------------------------


@dataclass(frozen=True)
class SeedTask:
    """One verify run: a trial's architecture and recipe, trained with one seed."""

    index: int  # position in the verify plan (results come back in any order)
    trial: int
    spec: ArchSpec
    recipe: Recipe
    seed: int
    run_name: str
    tags: dict[str, str]


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker process needs before its first run (data are loaded once per worker)."""

    threads: int
    device: str
    data_dir: str | None
    limit_train: int | None
    tracking_uri: str
    experiment_name: str
    budget: int
    experiment_file: str
    parent_run_id: str


_worker: dict = {}


def _init_worker(setup: WorkerSetup) -> None:
    import signal

    import torch

    from . import tracking
    from .data import load_mnist
    from .train import configure_threads

    # Ctrl-C reaches the whole process group: only the parent reacts, and it ends the workers
    # with SIGTERM, which ends each running MLflow run FAILED on its way out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _worker["setup"] = setup
    try:
        configure_threads(setup.threads)
        device = torch.device(setup.device)
        tracking.setup(setup.tracking_uri, setup.experiment_name)
        data = load_mnist(setup.data_dir, val_size=0, limit_train=setup.limit_train).to(device)
    except Exception as exc:  # noqa: BLE001 -- raised by the first run: a failing initializer is respawned for ever
        _worker["error"] = exc
        return
    _worker.update(device=device, data=data)


def _on_sigterm(signum, frame):
    if _worker.get("busy"):
        raise KeyboardInterrupt  # unwinds the running MLflow run (ends FAILED), then exits below
    os._exit(130)  # idle: nothing to close


def _run_seed(task: SeedTask) -> tuple[int, str, FitResult, dict]:
    from . import tracking

    if "error" in _worker:
        raise _worker["error"]
    setup: WorkerSetup = _worker["setup"]
    _worker["busy"] = True
    try:
        run_id, result, model = tracking.tracked_fit(
            task.spec, _worker["data"], task.recipe, _worker["device"], epochs=task.recipe.epochs,
            seed=task.seed, budget=setup.budget, experiment_file=setup.experiment_file,
            run_name=task.run_name, tags=task.tags, parent_run_id=setup.parent_run_id,
        )  # fmt: skip
    except KeyboardInterrupt:
        os._exit(130)  # quietly: no traceback from a worker the parent ended
    finally:
        _worker["busy"] = False
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return task.index, run_id, result, state


def run_in_parallel(tasks: list[SeedTask], jobs: int, setup: WorkerSetup):
    """Train `tasks` in `jobs` worker processes; yields (task, run_id, FitResult, state_dict) as
    runs finish. On an exception or interrupt in the caller, the workers are ended (SIGTERM)
    and their running MLflow runs end FAILED before this returns."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(setup,)) as pool:
        for index, run_id, result, state in pool.imap_unordered(_run_seed, tasks):
            yield tasks[index], run_id, result, state
        pool.close()  # all done: let the workers exit on their own
        pool.join()
