"""The Optuna side of a study: its sampler, its pruner, creating it or loading it by name.

Nothing here touches MLflow, so a machine without it (a lent GPU running a search through
`objective.Objective`, tests/device/frontier_search.py) creates exactly the study
`mnist-search study` would, and `mnist-search verify` reads it afterwards.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna

from mnist_search.core.config import ConfigError, Experiment
from mnist_search.core.settings import default_storage_url, mask_url
from mnist_search.search.bands import Bands
from mnist_search.search.records import StudyRecord
from mnist_search.search.storage import open_storage

# What a study's value is, by name (MLflow's `final/val_acc_last3`; see search.fidelity for seeds).
OBJECTIVE_NAME = "val_acc_last3 (mean over seeds)"
# A front's second objective (`search.bands`): fewer parameters.
PARAMS_NAME = "params"


def default_study_name(experiment: Experiment, budget: int) -> str:
    """A study's name when --study-name is not given: the experiment's name and the budget."""
    return f"{experiment.name}-b{budget}"


class StudyMismatch(ConfigError):
    """An existing study was created with another budget or experiment (a usage error: exit 2)."""


def load_study(name: str | None, storage: str | None) -> optuna.Study:
    """An existing study by name, opened for reading (the storage is never modified); without a
    name, the storage's only study. ConfigError, naming the studies there, if there is none."""
    store = open_storage(storage, writable=False)
    where = mask_url(storage or default_storage_url())
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if name is None and len(names) == 1:
        name = names[0]
    if name is None or name not in names:
        there = f"the studies in {where}: {', '.join(names)}" if names else f"no studies in {where}"
        given = "--study: choose one" if name is None else f"--study {name}: no such study"
        raise ConfigError(f"{given} ({there})")
    return optuna.load_study(study_name=name, storage=store)


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial n depend on (seed, n) alone.

    A plain seeded sampler draws the same sequence in every process: two workers started with the
    same --seed (`--jobs 2`, or the same command on two machines) proposed identical architectures
    during the random start-up (measured: trials 0-2 and 3-5 equal). Each trial is sampled by a
    TPESampler seeded from (seed, n): one process stays reproducible and every worker's proposals
    differ. TPE keeps no state between trials beyond its generator (it reads the study), so a
    fresh sampler per trial proposes what a reseeded one would, through public API only.
    """

    def __init__(self, seed: int, **tpe_options) -> None:
        self.seed, self.tpe_options = seed, tpe_options
        self._current: tuple[int, optuna.samplers.TPESampler] | None = None

    def _tpe(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        if self._current is None or self._current[0] != trial.number:
            state = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            with warnings.catch_warnings():  # constant_liar is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._current = (trial.number, optuna.samplers.TPESampler(seed=state, **self.tpe_options))
        return self._current[1]

    def infer_relative_search_space(self, study, trial):
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe(trial).after_trial(study, trial, state, values)


def make_pruner(experiment: Experiment, epochs: int) -> optuna.pruners.BasePruner:
    cfg = experiment.pruner
    if cfg.kind == "median":
        # n_min_trials, not n_startup_trials: Optuna counts every COMPLETE trial towards the
        # latter, over-budget proposals included, so one trained trial would already set the median.
        # n_min_trials counts only trials that reported the epoch, i.e. trained ones.
        return optuna.pruners.MedianPruner(
            n_startup_trials=0, n_warmup_steps=cfg.warmup_epochs, n_min_trials=3
        )
    if cfg.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(
    storage,
    name: str,
    experiment: Experiment,
    budget: int,
    epochs: int,
    seed: int,
    experiment_file: str,
    command: str = "",
    bands: Bands | None = None,
) -> optuna.Study:
    """Create the study, or load it (load_if_exists) when the same command runs again. A new
    study records its budget, experiment, epochs and the `command` that made it (URLs masked).

    With `bands` it is a front: two objectives (validation score up, parameters down), no Optuna
    pruner (none applies to two objectives: `fidelity.BandMedian` prunes within each band)."""
    sampler = TrialSeededTPE(
        seed=seed,
        n_startup_trials=8,
        constant_liar=True,  # parallel workers: pretend running trials ended badly, spread out
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["maximize", "minimize"] if bands else ["maximize"],
        sampler=sampler,
        pruner=optuna.pruners.NopPruner() if bands else make_pruner(experiment, epochs),
        load_if_exists=True,
    )
    known = StudyRecord.of(study)
    if known.budget is not None:
        _check_kind(study, known, bands)
    if study.metric_names is None:  # optuna-dashboard's axis: the objective's name, not "Objective 0"
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME, PARAMS_NAME] if bands else [OBJECTIVE_NAME])
    if known.budget is None:
        # A new study tries the space's start points first (a second worker creating it at the
        # same moment queues nothing twice).
        for point in experiment.search.start if experiment.search else ():
            study.enqueue_trial(params=dict(point), skip_if_exists=True)
        StudyRecord.write(
            study,
            budget=budget,
            experiment_file=experiment_file,
            epochs=epochs,
            command=mask_url(command) or None,
            budgets=list(bands.budgets) if bands else None,
        )
    elif known.budget != budget:
        raise StudyMismatch(
            f"--budget {budget}: study '{name}' was created with budget {known.budget}; "
            "use that budget or another --study-name"
        )
    elif known.experiment_file and _stem(known.experiment_file) != _stem(experiment_file):
        # Another space's proposals would mix into this study's ranking (and its TPE model).
        raise StudyMismatch(
            f"--experiment {experiment_file}: study '{name}' was created with experiment "
            f"{known.experiment_file}; give that one (--experiment) or another --study-name"
        )
    return study


def _check_kind(study: optuna.Study, known: StudyRecord, bands: Bands | None) -> None:
    """A front resumed as a front with the same bands, a one-budget study as one (StudyMismatch)."""
    name = study.study_name
    if bands is None and (known.budgets or len(study.directions) > 1):
        raise StudyMismatch(f"study '{name}' is a front (two objectives): run it with `mnist-search front`")
    if bands is not None and len(study.directions) == 1:
        raise StudyMismatch(
            f"study '{name}' is a one-budget study: run it with `mnist-search study`, or give another --study-name"
        )
    if bands is not None and known.budgets and tuple(known.budgets) != bands.budgets:
        have = ",".join(map(str, known.budgets))
        raise StudyMismatch(f"--budgets {bands.text}: front '{name}' was created with --budgets {have}")


def _stem(experiment_file: str) -> str:
    """An experiment's name as given, by path or by shipped name: `dir/tiny.yaml` and `tiny` agree."""
    return Path(experiment_file).name.removesuffix(".yaml")
