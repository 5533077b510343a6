"""`mnist-search study`: open or resume a study (its sampler, pruner and creation are in
`search.studies`, which needs no MLflow), training slots, dead workers, running it, and how it ended.

`--trials` is the study's total of trained trials, over every invocation and worker. A study is
run in steps so the CLI can print between them: `prepare_study` checks everything that can be
wrong and opens both stores (nothing is written to either before all checks pass), then
`StudySession.run` trains here or starts `--jobs` worker processes, and `study_end` turns the
outcome into the lines to print and the exit code (`Outcome`).
"""

from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
import torch
from optuna.trial import TrialState
from pydantic import Field, model_validator

from mnist_search.core.config import (
    DEFAULT_BUDGET,
    DEFAULT_TIMEOUT,
    DEFAULT_TRIALS,
    ConfigError,
    Experiment,
    Recipe,
    check_name,
    default_search,
    load_search,
)
from mnist_search.core.data import MNISTData, load_mnist
from mnist_search.core.diskspace import check_space
from mnist_search.core.errors import NoSpace, StorageError
from mnist_search.core.settings import default_storage_url, mask_url
from mnist_search.search.bands import Bands
from mnist_search.search.fidelity import BandMedian
from mnist_search.search.leaderboard import (
    completed,
    counts_toward_total,
    feasible_share,
    leaderboard,
    resume_summary,
    trial_tally,
    trials_done,
)
from mnist_search.search.objective import Objective, TrialFailed
from mnist_search.search.owners import Owner
from mnist_search.search.records import WORKER_DIED, TrialRecord
from mnist_search.search.space import check_budget
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import default_study_name, open_study
from mnist_search.tracking import names, views
from mnist_search.tracking.client import TRACKING_FAILURES, Tracking, runs_link, short_reason, tracking_target
from mnist_search.tracking.study import StudyTracker, earlier_parent, fail_stale_run
from mnist_search.training.teacher import check_teacher
from mnist_search.workflows.outcome import INTERRUPTED_CODE, Outcome
from mnist_search.workflows.request import RunRequest
from mnist_search.workflows.runtime import (
    WorkerExit,
    available_cores,
    check_jobs,
    run_workers,
    setup_device,
)

log = logging.getLogger("mnist_search")
DESCRIPTION = (
    "mnist-search studies: one parent run per study (its search space, sampler and pruner as "
    "params, plots, the best trial linked), one child run per trained trial. Compare runs and plot "
    "the `params` metric against `final/val_acc_last3`; the target is >= 99.4 % test accuracy in "
    "each of the last 3 epochs (tag target_met)."
)
REPEATS_TO_STOP = 3  # the same failure this many trials in a row stops the study


def ahead_of(trial: optuna.trial.FrozenTrial, number: int) -> bool:
    """Does live `trial` hold a claim on the study's remaining total ahead of trial `number`?

    Trials claim in number order: every live lower-numbered trial is ahead (still sampling,
    waiting for a slot, or training), a higher-numbered one only once it trains. The lowest live
    trial therefore waits on training trials alone, so workers never wait on one another in a
    circle at the end of a study; and of any two trials that both train, the higher counted the
    lower, so together they never exceed the total."""
    if trial.number == number or trial.state not in (TrialState.RUNNING, TrialState.WAITING):
        return False
    record = TrialRecord.of(trial)
    if record.surplus or record.feasible is False:  # feasible None: still sampling
        return False
    return trial.number < number or record.training


def reap_dead_workers(
    storage, study: optuna.Study, on_dead=None
) -> list[tuple[optuna.trial.FrozenTrial, str]]:
    """RUNNING trials whose owner process on this host is gone (killed, crashed) become FAIL
    ("worker died", not counted), their parameters are queued again for a live worker, and
    `on_dead(trial, reason)` closes what else they left open (their MLflow run).

    The journal file has no heartbeats; this is its counterpart for the workers of one machine.
    Several live workers may find the same dead trial: the first to mark it FAIL queues it."""
    reaped = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = TrialRecord.of(trial)
        owner = Owner.parse(record.worker or "")
        if owner is None or owner.alive() is not False:
            continue
        reason = f"{WORKER_DIED} (pid {owner.pid} on {owner.host})"
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            TrialRecord.store(storage, trial_id, fail_reason=reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        if record.feasible:
            study.enqueue_trial(trial.params)
        if on_dead is not None:
            on_dead(trial, reason)
        reaped.append((trial, reason))
    return reaped


class TotalReached:
    """Stops `optimize` once the study holds `total` trained trials (all workers together)."""

    def __init__(
        self, total: int, heartbeats: bool, reap=None, poll_seconds: float = 2.0, local: tuple[Path, ...] = ()
    ):
        self.total = total
        self.local = local  # the local store's folders: each must have room before a trial trains
        self.heartbeats = heartbeats  # does the storage notice dead workers (RDB with heartbeats)?
        self.reap = reap  # study -> None: fail the trials of dead local workers (journal storage)
        self.poll_seconds = poll_seconds

    def _watched(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Would this trial's death be noticed? With heartbeats always; else if its owner is local."""
        owner = Owner.parse(TrialRecord.of(trial).worker or "")
        return self.heartbeats or (owner is not None and owner.alive() is True)

    def slot(self, study: optuna.Study, trial_number: int) -> str:
        """May this trial train? "train"; "stop" when the finished trials make the total; "skip"
        when a dead worker's trial was just re-queued (WAITING): let `optimize` run that one next.

        While finished trials plus the trials ahead of this one (`ahead_of`) make the total, wait:
        one of them may still fail (its worker killed) and need replacing. A trial whose death
        could never be noticed (another machine's, on the journal file) is not waited for: this
        worker stops instead."""
        while True:
            if self.reap is not None:
                self.reap(study)
            trials = study.get_trials(deepcopy=False)  # one read for both counts
            done = sum(counts_toward_total(t) for t in trials)
            if done >= self.total:
                return "stop"
            ahead = [t for t in trials if ahead_of(t, trial_number)]
            if done + len(ahead) < self.total:
                for folder in self.local:
                    check_space(folder, "a trial")  # NoSpace: the study stops, the trial is not counted
                return "train"
            if not all(self._watched(t) for t in ahead):
                return "stop"
            if self.heartbeats:
                with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            if study.get_trials(deepcopy=False, states=[TrialState.WAITING]):
                return "skip"
            time.sleep(self.poll_seconds)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trials_done(study) >= self.total:
            study.stop()


class RepeatedFailure:
    """Stops `optimize` when this process's last REPEATS_TO_STOP trained trials failed with the
    same error: a fault that is not the trials' own (a broken setup, a GPU too small) would fail
    every one. A NaN loss is a trial's own outcome (its sampled learning rate), not such an error."""

    def __init__(self, repeats: int = REPEATS_TO_STOP):
        self.repeats, self.errors, self.stopped = repeats, [], None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        record = TrialRecord.of(trial)
        if record.feasible is not True or record.surplus:
            return  # not trained: neither a failure nor a success
        error = record.fail_reason if trial.state == TrialState.FAIL and record.error else None
        self.errors = [*self.errors, error][-self.repeats :]
        if len(self.errors) == self.repeats and error and len(set(self.errors)) == 1:
            self.stopped = error
            study.stop()


# --- running a study --------------------------------------------------------------------------


class StudyRequest(RunRequest):
    """Everything `mnist-search study` was asked to do. `--jobs` workers receive this same object
    (as JSON on their standard input), so an option is declared once and passwords in URLs never
    appear on a worker's command line."""

    budget: int = Field(DEFAULT_BUDGET, gt=0)
    # A path or a shipped experiment's name; None: the shipped one for the budget (default_search).
    experiment: str | None = None
    trials: int = Field(DEFAULT_TRIALS, gt=0)
    timeout: float | None = Field(DEFAULT_TIMEOUT, ge=0)  # seconds of search per run; 0 or None: no limit
    epochs: int | None = Field(None, gt=0)  # per trial; None: the recipe's
    replicas: int | None = Field(None, ge=1, le=64)  # seeds per trial, packed; None: the recipe's
    study_name: str | None = None
    storage: str | None = None
    seed: int = Field(0, ge=0)  # the sampler's; trial n trains seeds from (seed + n) x replicas
    fidelity: Literal["staged", "full"] = "staged"  # search.fidelity
    verify: bool = True  # retrain the best trial as `verify` does when the study ends
    jobs: int = Field(1, gt=0)
    service_wait: float = Field(0.0, ge=0, allow_inf_nan=False)  # seconds for a starting server
    experiment_name: str = names.EXPERIMENTS["study"]
    # A front (`mnist-search front`): its size bands, ascending, the largest being `budget`; the
    # study then has two objectives (search.bands). Empty: a one-budget study.
    budgets: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _bands(self) -> StudyRequest:
        if self.budgets and Bands(self.budgets).largest != self.budget:
            raise ValueError(f"budgets {self.budgets}: the largest must be the budget, {self.budget}")
        return self

    @property
    def bands(self) -> Bands | None:
        return Bands(self.budgets) if self.budgets else None

    @model_validator(mode="after")
    def _experiment_for_budget(self) -> StudyRequest:
        if self.experiment is None:  # frozen: set once, here, so workers receive it resolved
            chosen = default_search(self.budget)
            object.__setattr__(self, "experiment", chosen)
            if self.command:  # recorded: the experiment the budget chose, not a default that may change
                object.__setattr__(self, "command", f"{self.command} --experiment {chosen}")
        return self


@dataclass
class StudyOutcome:
    status: str  # FINISHED / KILLED (interrupted) / FAILED (tracking server lost, repeated failure)
    tracking_failure: str | None = None  # why the tracking server failed mid-study
    repeated_failure: str | None = None  # the reason REPEATS_TO_STOP trials in a row failed with
    store_error: str | None = None  # the study storage or its disk stopped the study (no room, a bad line)
    workers: list[WorkerExit] | None = None  # --jobs N: how each worker ended

    @property
    def dead_workers(self) -> list[WorkerExit]:
        asked = (-signal.SIGINT, -signal.SIGTERM)  # stopped by the interrupt sent on to it, not dead
        return [w for w in self.workers or [] if w.code < 0 and w.code not in asked]


@dataclass
class StudySession:
    """A checked, opened study, ready to run (see `prepare_study`)."""

    request: StudyRequest
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    experiment: Experiment
    recipe: Recipe  # with the --epochs / --replicas overrides: the one source of epochs and seeds per trial
    data: MNISTData
    device: torch.device
    tracking: Tracking
    storage_url: str
    heartbeats: bool

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def bands(self) -> Bands | None:
        return self.request.bands

    @property
    def done(self) -> int:
        return trials_done(self.study)

    def finished_already(self) -> str | None:
        """The line to say when the study already holds its total of trained trials."""
        done, total = self.done, self.request.trials
        if done < total:
            return None
        return (
            f"study {self.name} already has {done} trials done (--trials {total}); raise --trials to add more"
        )

    @property
    def link(self) -> str:
        """The study's page in MLflow's UI: its trials best first (`tracking.views`)."""
        return views.with_view(runs_link(self.tracking), views.view_key(self.name))

    def header(self) -> str:
        """The first line of a run: the study (and what it holds when this run resumes it), its
        progress, the workers, and where things go."""
        req, where = self.request, f"on {self.device.type}"
        if req.jobs > 1:
            threads = max(1, available_cores() // req.jobs)
            where = f"{req.jobs} worker processes, {threads} torch thread{'s' if threads > 1 else ''} each"
        resuming = resume_summary(self.study)
        resuming = f"{resuming}; " if resuming else ""
        plan = [f"new trials for up to {req.timeout / 60:.0f} min"] if req.timeout else []
        plan += ["then its best is verified"] if req.verify else []
        plan = f"; {', '.join(plan)}" if plan else ""
        what = f"study {self.name}"
        if self.bands is not None:
            what = f"front {self.name} (budgets {', '.join(f'{b:,}' for b in self.bands.budgets)})"
        return (
            f"{what}: {resuming}{self.done}/{req.trials} trials done; {where}; "
            f"storage {mask_url(self.storage_url)}; tracking {mask_url(self.tracking.uri)}{plan}"
        ) + (f"\nMLflow: {self.link}" if self.link else "")

    def band_median(self) -> BandMedian | None:
        """A front's pruner: the median rule within each size band (Optuna's pruners do not apply
        to two objectives), after the experiment's warm-up epochs; none for `pruner: {kind: none}`."""
        pruner = self.experiment.pruner
        if self.bands is None or pruner.kind == "none":
            return None
        return BandMedian(self.bands, pruner.warmup_epochs)

    @property
    def local_folders(self) -> tuple[Path, ...]:
        return local_folders(self.storage_url, self.tracking.uri)

    def reap(self, study: optuna.Study | None = None) -> list[tuple[optuna.trial.FrozenTrial, str]]:
        """Fail (and queue again) the trials of dead workers on this host; their runs end FAILED."""
        if self.heartbeats:
            return []  # the storage's heartbeats do this, on every host
        return reap_dead_workers(self.storage, study or self.study, on_dead=fail_stale_run)

    def run(self) -> StudyOutcome:
        """Train until the study's total (all workers), the timeout or an interrupt. What it
        does shows in the study's storage (`search.board`), for any display to read."""
        req = self.request
        tracker = StudyTracker(
            self.tracking, self.study, self.storage_url, req.budget, req.experiment, self.experiment, self.data,
            req.seed, self.bands,
        )  # fmt: skip
        if req.jobs > 1:
            # The workers get this request, resolved, as JSON on stdin; each loads its own data.
            work = req.model_copy(
                update={"jobs": 1, "storage": self.storage_url, "tracking_uri": self.tracking.uri}
            )
            exits = run_workers(["study-worker"], req.jobs, stdin=work.model_dump_json())
            self.reap()  # a worker that died last, with no live sibling left to notice
            worst = max((w.code for w in exits), key=abs)
            status = "FINISHED" if worst == 0 or self.done >= req.trials else "KILLED"
            try:
                tracker.finish(status)
            except TRACKING_FAILURES as exc:
                return StudyOutcome(status, short_reason(exc), workers=exits)
            return StudyOutcome(status, workers=exits)
        stopper = TotalReached(
            req.trials, heartbeats=self.heartbeats, reap=self.reap, local=self.local_folders
        )
        repeated = RepeatedFailure()
        objective = Objective(
            self.experiment.search, self.recipe, req.budget, self.data, self.device,
            tracker, seed=req.seed, slot=stopper.slot, fatal=TRACKING_FAILURES, fidelity=req.fidelity,
            bands=self.bands, band_median=self.band_median(),
            deadline=time.time() + req.timeout if req.timeout else None,  # as `optimize`'s timeout counts
        )  # fmt: skip
        callbacks = [stopper, repeated, tracker.after_trial]  # @best moves as the study improves
        status, lost = _optimize(self.study, objective, callbacks, req.timeout or None)
        store_error = str(lost) if isinstance(lost, (NoSpace, StorageError)) else None
        lost = None if store_error else lost
        if repeated.stopped and status == "FINISHED":
            status = "FAILED"
        try:
            tracker.finish(status)
        except TRACKING_FAILURES as exc:
            lost = lost or exc
        return StudyOutcome(
            status,
            short_reason(lost) if lost is not None else None,
            repeated.stopped,
            store_error=store_error,
        )


def prepare_study(request: StudyRequest) -> StudySession:
    """Check everything that can be wrong, then open both stores and the study.

    Raises ConfigError, BudgetError, DeviceError, TrackingError, DataError, StorageError or
    StudyMismatch (one line each) before anything is written."""
    exp = load_search(request.experiment)
    smallest = request.bands.budgets[0] if request.bands else request.budget
    flag = "--budgets" if request.bands else "--budget"
    check_budget(exp.search, smallest, f"{exp.name}'s", flag)
    check_teacher(exp.recipe)
    name = request.study_name or default_study_name(exp, request.budget)
    check_name("--study-name", name)
    check_name("--experiment-name", request.experiment_name)
    if request.timeout is not None and not math.isfinite(request.timeout):
        raise ConfigError(f"--timeout {request.timeout}: give a number of seconds")
    if request.jobs > 1:
        check_jobs(request.jobs)
    device = setup_device(request.device)
    recipe = exp.recipe.model_copy(
        update={
            "epochs": request.epochs or exp.recipe.epochs,
            "replicas": request.replicas or exp.recipe.replicas,
        }
    )
    target = tracking_target(request.tracking_uri, wait=request.service_wait)
    storage_url = request.storage or default_storage_url()
    for folder in local_folders(storage_url, target.uri):
        check_space(folder, "a study")
    data = load_mnist(request.data_dir, val_size=recipe.val_size, limit_train=request.limit_train)
    if request.jobs == 1:
        data = data.to(device)  # with --jobs, loaded only to check it: each worker loads its own
    store = open_storage(request.storage, on_stale=fail_stale_run, wait=request.service_wait)
    tracking = target.open(request.experiment_name, DESCRIPTION)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial; no tracebacks
    check_not_orphaned(store, tracking, name, storage_url)
    study = open_study(
        store,
        name,
        exp,
        request.budget,
        recipe.epochs,
        request.seed,
        request.experiment,
        request.command,
        request.bands,
    )
    heartbeats = getattr(store, "get_heartbeat_interval", lambda: None)() is not None
    session = StudySession(
        request, study, store, exp, recipe, data, device, tracking, storage_url, heartbeats
    )
    for trial, reason in session.reap():  # a worker killed earlier (kill -9, OOM) left it RUNNING
        log.warning(
            "trial %d: %s; marked FAIL (not counted), its parameters will be trained again",
            trial.number,
            reason,
        )
    return session


def local_folders(storage_url: str, tracking_uri: str) -> tuple[Path, ...]:
    """The folders of this machine the study writes its stores into: the journal file's and the
    SQLite database's (a database server's disk is not ours to check)."""
    folders = []
    if "://" not in storage_url:
        folders.append(Path(storage_url).absolute().parent)
    if tracking_uri.startswith("sqlite:///"):
        folders.append(Path(tracking_uri.removeprefix("sqlite:///")).absolute().parent)
    return tuple(dict.fromkeys(folders))


def check_not_orphaned(store, tracking: Tracking, name: str, storage_url: str) -> None:
    """A new study whose name and storage match a parent run MLflow already holds: its storage was
    deleted (or moved), and starting it again would put a second parent and duplicate trial runs
    beside the first. Refused (ConfigError) before anything is written."""

    def in_storage() -> bool:
        return name in {s.study_name for s in optuna.get_all_study_summaries(store)}

    if in_storage():
        return
    parent = earlier_parent(tracking, name, storage_url)
    # A worker starting beside us creates the study before its parent run: look again.
    if parent is not None and not in_storage():
        raise ConfigError(
            f"study {name}: not in {mask_url(storage_url)}, but MLflow ({mask_url(tracking.uri)}) holds its "
            f"runs (parent run {parent}): was its study storage deleted or moved? Give that storage "
            "(--storage), or another --study-name"
        )


def _optimize(study, objective, callbacks, timeout: float | None) -> tuple[str, Exception | None]:
    """Run trials until the study's total, the timeout or an interrupt (Ctrl-C or SIGTERM):
    ("FINISHED" | "KILLED" | "FAILED", the tracking failure that stopped it, if one did). The
    command's signal handling (`runtime.handle_interrupts`) turns SIGTERM into the same interrupt."""
    try:
        study.optimize(
            objective, timeout=timeout, callbacks=callbacks, catch=(TrialFailed,), gc_after_trial=False
        )
    except KeyboardInterrupt:
        return "KILLED", None
    except (NoSpace, StorageError) as exc:  # no room for the next trial; a journal gone bad mid-study
        return "FAILED", exc
    except TRACKING_FAILURES as exc:
        # Policy: the tracking server went away. The running trial FAILs (Optuna) and the study
        # stops; completed trials stay in the study storage; re-running resumes once it is back.
        return "FAILED", exc
    except Exception as exc:
        # Optuna 5.0's _run_trial, interrupted while it records a finished trial (`_tell_with_warning`),
        # raises UnboundLocalError ('updated_state') from its `finally` over the KeyboardInterrupt
        # (seen stopping a search with `timeout -s INT`: a worker's traceback). The interrupt is
        # what happened: the trial is marked FAIL like any running one.
        if isinstance(exc.__context__, KeyboardInterrupt):
            return "KILLED", None
        raise
    return "FINISHED", None


# --- how a study ended, as the command tells it ---------------------------------------------------


def study_summary(study, trials: int, bands: Bands | None = None) -> str:
    """One line: trials done (trained, pruned, failed), the share of proposals under budget, and
    the best trial (a front's: the best under each budget)."""
    feasible, proposed = feasible_share(study)
    tally = trial_tally(study)
    line = (
        f"study {study.study_name}: {tally.done}/{trials} trials done ({tally.words(over_budget=False)}); "
        f"{feasible}/{proposed} proposals under budget ({feasible / max(proposed, 1):.0%})"
    )
    if bands is not None:
        for budget in bands.budgets:
            best = next(iter(completed(leaderboard(study, under=budget))), None)
            line += f"; < {budget:,}: " + (f"trial {best.trial}, {best.params:,} params, val {best.val_acc:.4f}"
                                           if best else "none yet")  # fmt: skip
        return line
    best = next(iter(completed(leaderboard(study))), None)
    if best:
        line += (
            f"; best trial {best.trial}: {best.params:,} params, val {best.val_acc:.4f}, "
            f"test min(last 3) {best.test_acc_min_last3:.4f}"
        )
    return line


def nothing_completed(session: StudySession) -> str | None:
    """The error line of a study that ended with no completed trial (None when it has one): how
    many failed, with the first reason, and how many were pruned."""
    trials = session.study.get_trials(deepcopy=False)
    tally = trial_tally(session.study)
    if tally.trained:
        return None
    failed = [t for t in trials if counts_toward_total(t) and t.state == TrialState.FAIL]
    first = TrialRecord.of(failed[0]).fail_reason if failed else None
    why = f"{tally.failed} failed" + (f" (first: trial {failed[0].number}, {first})" if first else "")
    why += f", {tally.pruned} pruned" if tally.pruned else ""
    if not tally.done:
        timeout = session.request.timeout
        why = f"none ended within --timeout {timeout:g} s" if timeout else "none ended"
    return f"error: study {session.name}: no trial completed: {why}; fix the cause and run the same command to go on"


def study_end(session: StudySession, outcome: StudyOutcome, worker: bool = False) -> Outcome:
    """The lines and exit code of a study invocation that ran (`session.run`): 0 when the study
    reached its total or its timeout, 1 for a fault that stopped it, 130 when interrupted."""
    if outcome.workers is not None:
        return _workers_end(session, outcome)
    end, name = Outcome(), session.name
    if outcome.store_error is not None:
        return end.say(
            f"error: {outcome.store_error}; the study stopped, its {session.done} done trial(s) kept", "err"
        ).with_code(2)
    if outcome.repeated_failure is not None:
        return end.say(
            f"error: {name}: the last {REPEATS_TO_STOP} trials failed with the same error "
            f"({outcome.repeated_failure}); the study stopped; "
            "fix the cause and re-run the same command to resume",
            "err",
        ).with_code(1)
    if outcome.tracking_failure is not None:
        return end.say(
            f"error: tracking server {mask_url(session.tracking.uri)} failed mid-study "
            f"({outcome.tracking_failure}); the running trial was marked FAIL, "
            f"{session.done} finished trials are kept in the study storage; "
            "re-run the same command to resume",
            "err",
        ).with_code(1)
    if not worker:  # a worker's summary would not be the study's: others may still be training
        end.say(study_summary(session.study, session.request.trials, session.bands)).say_link(session.link)
    if outcome.status == "KILLED":
        if worker:  # the command that started the workers says it, once
            return end.with_code(INTERRUPTED_CODE)
        return end.say(
            "interrupted: the running trial was marked FAIL; run the same command to resume", "err"
        ).with_code(INTERRUPTED_CODE)
    if not worker and (error := nothing_completed(session)) is not None:
        return end.say(error, "err").with_code(1)
    return end


def _workers_end(session: StudySession, outcome: StudyOutcome) -> Outcome:
    """`--jobs N`: the study's count, a line per worker that died, and the exit code."""
    done, total = session.done, session.request.trials
    end = Outcome().say(f"study {session.name}: {done}/{total} trials done by {len(outcome.workers)} workers")
    # What the workers said, once each (two workers that lost the same server say the same line).
    for line in dict.fromkeys(line for w in outcome.workers for line in w.said.splitlines() if line.strip()):
        end.say(line, "err")
    for w in outcome.dead_workers:
        then = "another worker trained its trial again" if done >= total else "its trial is queued again"
        end.say(f"warning: worker {w.index} (pid {w.pid}) {w.how}; {then}", "err")
    codes = [w.code for w in outcome.workers]
    if 130 in codes:
        return end.say(
            "interrupted: the running trials were marked FAIL; run the same command to resume", "err"
        ).with_code(INTERRUPTED_CODE)
    if done >= total or not any(codes):  # the total, or every worker reached --timeout
        end.say(study_summary(session.study, total, session.bands)).say_link(session.link)
        if (error := nothing_completed(session)) is not None:
            return end.say(error, "err").with_code(1)
        return end
    if outcome.dead_workers:
        return end.say(
            f"error: {done}/{total} trials done when the workers ended; re-run the same command to finish",
            "err",
        ).with_code(1)
    return end.with_code(max(codes, key=abs) or 1)
