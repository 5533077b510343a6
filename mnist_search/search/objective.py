"""The search objective: propose a spec, reject it if over budget, else train and score it.

An over-budget proposal is recorded as an infeasible trial through Optuna 5's
`trial.set_constraint` (feasible when <= 0), which the constrained TPE sampler learns from, and
costs microseconds: it is never built. Its state is PRUNED ("over budget"), not COMPLETE: it has
no accuracy, so nothing that reads completed trials (optuna-dashboard's importances, `best_trial`)
mistakes it for a trained one scoring 0. Observers (MLflow, the progress display) follow each trial
through `TrialHooks`; the objective itself never prints or logs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import optuna
import torch
from optuna.trial import TrialState

from mnist_search.core.config import ArchSpec, Recipe, SearchSpace
from mnist_search.core.data import MNISTData
from mnist_search.core.model import count_params, mult_adds
from mnist_search.core.results import EpochResult, ReplicaResults, mean_epoch
from mnist_search.core.settings import mask_url
from mnist_search.search.bands import Bands
from mnist_search.search.board import ProgressWriter
from mnist_search.search.fidelity import FIDELITIES, BandMedian, contends, same_band
from mnist_search.search.owners import this_process
from mnist_search.search.records import INTERRUPTED, TrialRecord
from mnist_search.search.space import record_budget, sample_recipe, sample_spec
from mnist_search.training.train import NonFiniteLoss, train_seeds


@dataclass
class TrialEnd:
    """What the objective hands to its observers when a trained trial ends."""

    number: int
    state: str  # COMPLETE / PRUNED / FAIL
    spec: ArchSpec
    recipe: Recipe
    params: int
    result: ReplicaResults  # per seed; reads like one FitResult (the mean, the worst seed)
    seconds: float
    reason: str = ""


SCORED_EPOCHS = 3  # the objective is the mean validation accuracy of the last 3 epochs


def trial_seed(base: int, number: int) -> int:
    """Trial n trains with seed base + n: a distinct, reproducible initialisation per trial."""
    return base + number


def replica_seeds(base: int, number: int, replicas: int) -> list[int]:
    """The seeds of trial n's K replicas: (base + n) * K + k, distinct across the trials of a
    study; with K = 1 the trial's seed itself."""
    first = trial_seed(base, number) * replicas
    return list(range(first, first + replicas))


class TrialFailed(Exception):
    """A trial failed for a reason of its own (recorded on it); the study goes on."""


def describe(exc: BaseException) -> str:
    """One line for an exception: its type and the first line of its message (URLs masked: it
    is stored in the study and in MLflow)."""
    text = str(exc).strip().splitlines()
    return mask_url(f"{type(exc).__name__}: {text[0]}"[:300]) if text else type(exc).__name__


class TrialHooks(Protocol):
    """Observers of a trained trial: MLflow logging and the progress display plug in here."""

    def trial_started(self, trial: optuna.Trial, spec: ArchSpec, recipe: Recipe, seeds: list[int]) -> None:
        """`seeds`: what it trains first (all its seeds, or with staged fidelity the first)."""

    def epoch_ended(self, trial: optuna.Trial, r: EpochResult, per_seed: dict[int, EpochResult]) -> None:
        """`r`: the epoch's mean over the trial's seeds; `per_seed`: each seed's own."""

    def seeds_added(self, trial: optuna.Trial, seeds: list[int], first: ReplicaResults) -> None:
        """Staged fidelity: the trial goes on to all `seeds`; `first` is what its first seed did."""

    def trial_ended(self, end: TrialEnd, model: torch.nn.Module | None) -> None: ...


class NoHooks:
    def trial_started(self, trial, spec, recipe, seeds) -> None: ...

    def epoch_ended(self, trial, r, per_seed) -> None: ...

    def seeds_added(self, trial, seeds, first) -> None: ...

    def trial_ended(self, end, model) -> None: ...


class Objective:
    """Maximise the mean validation accuracy of the last 3 epochs of a budget-feasible spec.

    `recipe.epochs` is the number of epochs per trial (the one source of it), `recipe.replicas` the
    seeds a trial's mean is over; `fidelity` (`search.fidelity`) whether all train at once or the
    first alone, the others only when it contends. `slot(study, number)`
    says whether the trial may train ("train"), or the study's total is reached ("stop", "skip").
    Any exception while a trial trains fails that trial only, with its reason (`TrialFailed`),
    except the `fatal` ones (a tracking server that went away), which stop the study.

    With `bands` (a front) it returns two objectives, (score, params), and a trial is judged within
    its size band: its epochs by `band_median` (Optuna's pruners do not apply to two objectives),
    its first seed's contention against its band's bar. After `deadline` (Unix time: the end of
    the study's search time) a first seed no longer contends: what time is left goes to the verify.
    """

    def __init__(
        self,
        space: SearchSpace,
        recipe: Recipe,
        budget: int,
        data: MNISTData,
        device: torch.device,
        hooks: TrialHooks | None = None,
        *,
        seed: int = 0,
        slot: Callable[[optuna.Study, int], str] = lambda study, number: "train",
        fatal: tuple[type[BaseException], ...] = (),
        fidelity: str = "staged",
        bands: Bands | None = None,
        band_median: BandMedian | None = None,
        deadline: float | None = None,
    ):
        if fidelity not in FIDELITIES:
            raise ValueError(f"fidelity {fidelity!r}: one of {', '.join(FIDELITIES)}")
        self.space, self.recipe, self.budget = space, recipe, budget
        self.data, self.device, self.hooks = data, device, hooks or NoHooks()
        self.seed, self.slot, self.fatal, self.fidelity = seed, slot, fatal, fidelity
        self.bands, self.band_median, self.deadline = bands, band_median, deadline
        self.owner = str(this_process())

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        # The owner first: from now on a worker that dies leaves a trial that can be told dead.
        TrialRecord.write(trial, worker=self.owner)
        spec = sample_spec(trial, self.space)
        recipe = sample_recipe(trial, self.space, self.recipe)
        params = count_params(spec)
        under = record_budget(trial, params, self.budget)
        TrialRecord.write(trial, params=params, mult_adds=mult_adds(spec), spec=spec.model_dump(mode="json"))
        if not under:
            # Rejected in microseconds: recorded as infeasible so constrained TPE learns from it
            # (TPE treats an infeasible trial alike whether COMPLETE or PRUNED).
            reason = f"over budget: {params:,} >= {self.budget:,} params, not trained"
            TrialRecord.write(trial, feasible=False, fail_reason=reason)  # shown by optuna-dashboard
            raise optuna.TrialPruned(reason)
        # A dead worker's trial retried inherits its user attributes: it is not training (yet).
        TrialRecord.write(trial, feasible=True, training=False)
        slot = self.slot(trial.study, trial.number)
        if slot != "train":
            # Not trained, not counted: the study's total is (being) reached by other workers
            # ("stop": this worker ends), or a dead worker's trial waits to be retried ("skip").
            TrialRecord.write(trial, surplus=True)
            if slot == "stop":
                trial.study.stop()
            raise optuna.TrialPruned(f"not trained ({slot})")
        # Now ahead of lower-numbered trials still waiting for a slot.
        TrialRecord.write(
            trial, training=True, recipe=recipe.model_dump(mode="json"), device=self.device.type
        )
        return self._train(trial, spec, recipe, params)

    def _train(
        self, trial: optuna.Trial, spec: ArchSpec, recipe: Recipe, params: int
    ) -> float | tuple[float, float]:
        seeds = replica_seeds(self.seed, trial.number, recipe.replicas)
        run = TrialTraining(
            trial, spec, recipe, params, self.hooks, staged=self.fidelity == "staged",
            bands=self.bands, band_median=self.band_median, deadline=self.deadline,
        )  # fmt: skip
        try:  # from the trial's start: an interrupt before its first batch is "interrupted" too
            first = seeds[:1] if run.staged else seeds
            self.hooks.trial_started(trial, spec, recipe, first)
            models = run.train(self.data, self.device, first, prune=True)
            if run.staged and len(seeds) > 1 and math.isfinite(run.result.val_score):
                models = run.more_seeds(self.data, self.device, seeds, models)
            model = models[run.result.best]  # the seed with the best validation score
        except optuna.TrialPruned as exc:
            run.ended("PRUNED", str(exc))
            raise
        except KeyboardInterrupt:
            run.ended("FAIL", INTERRUPTED)
            raise
        except self.fatal:
            raise  # the tracking store is gone: nothing more can be recorded there
        except torch.cuda.OutOfMemoryError:
            run.ended("FAIL", "CUDA out of memory", error=True)
            raise TrialFailed("CUDA out of memory") from None
        except NonFiniteLoss as exc:
            run.ended("FAIL", str(exc))
            raise TrialFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 -- any other fault fails this trial only, with its reason
            run.ended("FAIL", describe(exc), error=True)
            raise TrialFailed(describe(exc)) from None
        score = run.result.val_score
        if not math.isfinite(score):
            reason = f"objective is {score} (no validation accuracy to score)"
            run.ended("FAIL", reason)
            raise TrialFailed(reason)
        try:
            run.ended("COMPLETE", trained=model)  # seconds: its model is logged
        except KeyboardInterrupt:  # landed mid-way: the trial and its run end interrupted after all
            run.ended("FAIL", INTERRUPTED)
            raise
        return (score, float(params)) if self.bands else score


class TrialTraining:
    """One trial's training, in one or two stages: its seeds (`train`), then with staged fidelity
    its other seeds when its first one contends (`more_seeds`); what it trained so far is
    `result` whenever it ends (`ended`). In a front (`bands`) both judgements stay in its band."""

    def __init__(
        self, trial, spec: ArchSpec, recipe: Recipe, params: int, hooks: TrialHooks, staged: bool,
        bands: Bands | None = None, band_median: BandMedian | None = None, deadline: float | None = None,
    ):  # fmt: skip
        self.trial, self.spec, self.recipe, self.params, self.hooks = trial, spec, recipe, params, hooks
        self.bands, self.band_median, self.deadline, self.curve = bands, band_median, deadline, []
        self.staged = staged and recipe.replicas > 1
        self.result = ReplicaResults.empty([])
        self.progress = ProgressWriter(trial, recipe.epochs)
        self.start = time.perf_counter()

    def train(self, data, device, seeds: list[int], prune: bool, stage: int = 1) -> list[torch.nn.Module]:
        """Train `seeds` at once; their epochs are reported to the pruner when `prune`."""
        trial, recipe = self.trial, self.recipe
        self.result = result = ReplicaResults.empty(seeds)
        if stage == 1:
            TrialRecord.write(trial, seeds=seeds)
        self.progress.start(stage, len(seeds))

        def on_epoch(epoch: list[EpochResult]) -> None:  # `result` has it already
            r = mean_epoch(epoch)
            self.hooks.epoch_ended(trial, r, dict(zip(seeds, epoch)))
            self.progress.epoch(r.epoch, r.val_acc)
            if not prune or not math.isfinite(r.val_acc):
                return  # nothing to judge it by (Optuna's pruners prune a NaN): it FAILs at the end
            # Never within the epochs it is scored on (the last 3): by then most of its cost is
            # spent, and a trial pruned after its last epoch (seen on the GPU) is a loss for nothing.
            judged = r.epoch <= recipe.epochs - SCORED_EPOCHS
            if self.band_median is not None:  # a front: its band's median, from the trials' curves
                self.curve.append(r.val_acc)
                TrialRecord.write(trial, curve=self.curve)
                if judged and self.band_median.prune(
                    self._others(TrialState.COMPLETE), self.params, self.curve
                ):
                    raise optuna.TrialPruned(
                        f"pruned after epoch {r.epoch} (val acc {r.val_acc:.4f}, below its band's median)"
                    )
                return
            trial.report(r.val_acc, step=r.epoch)
            if judged and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {r.epoch} (val acc {r.val_acc:.4f})")

        def packed(layout: str) -> None:
            TrialRecord.write(trial, pack_layout=layout)

        return train_seeds(
            self.spec, data, recipe, device, result, on_epoch, packed, on_step=self.progress.step
        )

    def more_seeds(self, data, device, seeds: list[int], models: list) -> list[torch.nn.Module]:
        """Staged fidelity: the first seed's score decides (`fidelity.contends`) whether the trial
        trains its other seeds; its figures are then the mean of all of them. Never once the study's
        search time is up (`deadline`): 2 more seeds would hold the verify back by a trial's time."""
        first = self.result
        others = same_band(self._others(TrialState.COMPLETE, TrialState.RUNNING), self.bands, self.params)
        late = self.deadline is not None and time.time() > self.deadline
        contender = not late and contends(first.val_score, others)
        TrialRecord.write(self.trial, first_score=first.val_score, contender=contender)
        if not contender:
            return models
        self.hooks.seeds_added(self.trial, seeds, first)
        try:
            more = self.train(data, device, seeds[1:], prune=False, stage=2)
        except BaseException:
            self.result = first  # what the trial has to show is its first seed's
            raise
        self.result = ReplicaResults(seeds, first.results + self.result.results, layout=self.result.layout)
        TrialRecord.write(self.trial, seeds=seeds)
        return models + more

    def _others(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        """The study's other trials in `states`, as stored now."""
        found = self.trial.study.get_trials(deepcopy=False, states=states)
        return [t for t in found if t.number != self.trial.number]

    def ended(
        self, state: str, reason: str = "", trained: torch.nn.Module | None = None, error: bool = False
    ) -> None:
        trial, result = self.trial, self.result
        end = TrialEnd(
            trial.number, state, self.spec, self.recipe, self.params, result,
            time.perf_counter() - self.start, reason,
        )  # fmt: skip
        TrialRecord.write(trial, seconds=round(end.seconds, 2), epochs_run=len(result.epochs), progress=None)
        if result.epochs:
            TrialRecord.write(
                trial,
                test_acc_min_last3=result.test_min_last3,
                test_acc=result.epochs[-1].test_acc,
                target_met=result.target_met(),
            )
            if len(result.seeds) > 1 and len(result.results[0].epochs) >= 1:
                TrialRecord.write(trial, val_acc_worst=result.val_worst)
        if reason:
            TrialRecord.write(trial, fail_reason=reason, error=error)
        self.hooks.trial_ended(end, trained)
