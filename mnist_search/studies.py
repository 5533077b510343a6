"""Creating, resuming and counting studies; `--trials` is the study's total of trained trials."""

from __future__ import annotations

import time
import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

from .config import Experiment
from .search import feasible, make_pruner


class StudyMismatch(ValueError):
    """An existing study was created with another budget or experiment."""


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial n depend on (seed, n) alone.

    A plain seeded sampler draws the same sequence in every process: two workers started with the
    same --seed (`--jobs 2`, or the same command on two machines) proposed identical architectures
    during the random start-up (measured: trials 0-2 and 3-5 equal). Reseeding per trial keeps one
    process reproducible and makes every worker's proposals differ.
    """

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        state = int(np.random.SeedSequence([self._base_seed, trial.number]).generate_state(1)[0])
        # Optuna has no public way to seed an existing sampler (reseed_rng() draws a fresh seed);
        # these are TPESampler's generator and that of its start-up RandomSampler.
        self._rng.rng.seed(state)
        self._random_sampler._rng.rng.seed(state)


def open_study(
    storage, name: str, experiment: Experiment, budget: int, epochs: int, seed: int, experiment_file: str
) -> optuna.Study:
    """Create the study, or load it (load_if_exists) when the same command runs again."""
    sampler = TrialSeededTPE(
        seed=seed,
        n_startup_trials=8,
        constant_liar=True,  # parallel workers: pretend running trials ended badly, spread out
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(experiment, epochs),
        load_if_exists=True,
    )
    attrs = study.user_attrs
    if "budget" not in attrs:
        study.set_user_attr("budget", budget)
        study.set_user_attr("experiment_file", experiment_file)
        study.set_user_attr("epochs", epochs)
    elif attrs["budget"] != budget:
        raise StudyMismatch(
            f"--budget {budget}: study '{name}' was created with budget {attrs['budget']}; "
            "use that budget or another --study-name"
        )
    return study


def counts_toward_total(trial: optuna.trial.FrozenTrial) -> bool:
    """Trained trials that ended on their own: completed, pruned, or failed for a reason of
    their own (NaN loss, out of memory). Interrupted trials and trials of killed workers do not
    count, so running the command again replaces them."""
    if not feasible(trial) or trial.user_attrs.get("surplus"):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason")
        return bool(reason) and reason != "interrupted"
    return False


def trials_done(study: optuna.Study) -> int:
    return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))


def ahead_of(trial: optuna.trial.FrozenTrial, number: int) -> bool:
    """Does live `trial` hold a claim on the study's remaining total ahead of trial `number`?

    Trials claim in number order: every live lower-numbered trial is ahead (still sampling,
    waiting for a slot, or training), a higher-numbered one only once it trains. The lowest live
    trial therefore waits on training trials alone, so workers never wait on one another in a
    circle at the end of a study; and of any two trials that both train, the higher counted the
    lower, so together they never exceed the total."""
    if trial.number == number or trial.state not in (TrialState.RUNNING, TrialState.WAITING):
        return False
    attrs = trial.user_attrs
    if attrs.get("surplus") or not attrs.get("feasible", True):  # no "feasible" yet: sampling
        return False
    return trial.number < number or bool(attrs.get("training"))


class TotalReached:
    """Stops `optimize` once the study holds `total` trained trials (all workers together)."""

    def __init__(self, total: int, heartbeats: bool, poll_seconds: float = 2.0):
        self.total = total
        self.heartbeats = heartbeats  # does the storage notice dead workers (RDB with heartbeats)?
        self.poll_seconds = poll_seconds

    def slot(self, study: optuna.Study, trial_number: int) -> str:
        """May this trial train? "train"; "stop" when the finished trials make the total; "skip"
        when a dead worker's trial was just re-queued (WAITING): let `optimize` run that one next.

        While finished trials plus the trials ahead of this one (`ahead_of`) make the total, wait:
        one of them may still fail (its worker killed) and need replacing. Without heartbeats a
        dead worker's trial would never end, so this worker stops instead."""
        while True:
            trials = study.get_trials(deepcopy=False)  # one read for both counts
            done = sum(counts_toward_total(t) for t in trials)
            if done >= self.total:
                return "stop"
            if done + sum(ahead_of(t, trial_number) for t in trials) < self.total:
                return "train"
            if not self.heartbeats:
                return "stop"
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if study.get_trials(deepcopy=False, states=[TrialState.WAITING]):
                return "skip"
            time.sleep(self.poll_seconds)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trials_done(study) >= self.total:
            study.stop()
