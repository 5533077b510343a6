"""A study in MLflow: one parent run per study, one nested child run per trained trial.

Written by hand (optuna-integration's MLflowCallback is deprecated and logs only final values).
The parent's id is kept in the study's attributes, so a resumed study (or a second worker) nests
its trials under the same parent. Each trained trial's child run (tag mlflow.parentRunId) ends
FINISHED, KILLED (pruned) or FAILED; over-budget proposals are never trained and get no run.
Each trial's run is a `sink.RunSink`, as `train`'s and `verify`'s are.
"""

from __future__ import annotations

import time

import mlflow
import optuna

from mnist_search.core.config import TARGET, ArchSpec, Experiment, Recipe, spec_to_yaml
from mnist_search.core.data import MNISTData
from mnist_search.core.model import count_params
from mnist_search.core.results import EpochResult, ReplicaResults
from mnist_search.core.settings import mask_url
from mnist_search.search.bands import Bands
from mnist_search.search.leaderboard import completed, feasible_share, leaderboard, trial_tally
from mnist_search.search.objective import TrialEnd
from mnist_search.search.records import INTERRUPTED, StudyRecord, TrialRecord
from mnist_search.tracking import names, views
from mnist_search.tracking.client import RunLog, Tracking, race_tolerant, source_tags
from mnist_search.tracking.registry import point_best, register, registered_name
from mnist_search.tracking.sink import RunSink

PARENT_SETTLE_SECONDS = 2.0  # only paid by a worker that creates a study's parent run


def fail_stale_run(trial: optuna.trial.FrozenTrial, reason: str = "") -> None:
    """A dead worker's trial: end its child run FAILED with the reason, which the worker cannot."""
    run_id = TrialRecord.of(trial).mlflow_run_id
    if run_id:
        client = mlflow.MlflowClient()  # the process-wide URI that tracking.connect set
        client.set_tag(run_id, "state", "FAIL")
        client.set_tag(
            run_id, "failure", reason or "worker stopped sending heartbeats (killed?); trial retried"
        )
        client.set_terminated(run_id, "FAILED")


def earlier_parent(tracking: Tracking, study_name: str, storage_url: str) -> str | None:
    """The id of a study's parent run in this tracking store, made with this study storage (None
    if there is none): asked before a study is created, it finds the runs of a study whose
    storage was deleted, which a new study of that name would otherwise duplicate."""
    storage = mask_url(storage_url)
    runs = tracking.client.search_runs([tracking.experiment_id], filter_string="tags.kind = 'study'")
    for run in runs:
        tags = run.data.tags
        if tags.get("study_name") == study_name and tags.get("storage") == storage:
            return run.info.run_id
    return None


class StudyTracker:
    """MLflow logging of a study; plugs into the objective as its `TrialHooks`."""

    def __init__(
        self,
        tracking: Tracking,
        study: optuna.Study,
        storage_url: str,
        budget: int,
        experiment_file: str,
        experiment: Experiment,
        data: MNISTData,
        seed: int,
        bands: Bands | None = None,
    ):
        self.study, self.budget, self.bands = study, budget, bands
        self.storage = mask_url(storage_url)
        self.experiment_id, self.experiment_file = tracking.experiment_id, experiment_file
        self.experiment, self.data, self.seed = experiment, data, seed
        self.client = tracking.client
        self.tracking = tracking
        self.sinks: dict[int, RunSink] = {}
        self._ranks: dict[str, int] = {}  # what this worker last wrote as each run's rank
        self._elsewhere: set[str] = set()  # trials' runs in another tracking store (a resumed study)
        self._own_parent = self._parent()
        # The study's page in MLflow (its trials best first); workers write it at once: tolerant.
        race_tolerant(views.publish, self.client, self.experiment_id, study.study_name)

    @property
    def parent_id(self) -> str:
        """Read from the study storage each time: a worker that joined while racers settled the
        parent converges on the recorded one."""
        return StudyRecord.of(self.study).mlflow_parent_run_id or self._own_parent

    def _reuse(self, run_id: str | None) -> str | None:
        """The recorded parent run, set RUNNING again, if it still exists in this store."""
        if not run_id:
            return None
        try:
            if self.client.get_run(run_id).info.lifecycle_stage != "active":
                return None
        except mlflow.exceptions.MlflowException:
            return None  # deleted, or it lives in another tracking store: start a new one
        try:
            self.client.update_run(run_id, status="RUNNING")
        except mlflow.exceptions.MlflowException:
            pass  # a racer deleted it meanwhile: parent_id re-reads the winner
        return run_id

    def _parent(self) -> str:
        known = self._reuse(StudyRecord.of(self.study).mlflow_parent_run_id)
        if known:
            return known
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
            }
            | ({"budgets": self.bands.text} if self.bands else {})
            | source_tags("study"),
        )
        StudyRecord.write(self.study, mlflow_parent_run_id=run.info.run_id)
        # Workers started together race to create the parent. The storage has no compare-and-set
        # for user attributes, so let the racers' writes settle, then the last one written wins
        # and the others delete their run before logging anything under it.
        time.sleep(PARENT_SETTLE_SECONDS)
        winner = StudyRecord.of(self.study).mlflow_parent_run_id or run.info.run_id  # from the storage
        if winner != run.info.run_id:
            self.client.delete_run(run.info.run_id)
        else:
            log = RunLog(self.client, winner)
            log.params(self.search_params())
            log.dataset(self.data, "search")
        return winner

    def search_params(self) -> dict[str, str]:
        """What defines the search, fixed for the study's life: its space, sampler and pruner."""
        space = {f"search.{k}": v for k, v in self.experiment.search.model_dump(mode="json").items()}
        pruner = {f"pruner.{k}": v for k, v in self.experiment.pruner.model_dump(mode="json").items()}
        sampler = "TPE (multivariate, constrained: params < budget), one sampler seeded per trial"
        if self.bands:
            sampler += "; two objectives (val score up, params down), pruned within size bands"
        return (
            {k: str(v) for k, v in (space | pruner).items()}
            | {
                "sampler": sampler,
                "seed": str(self.seed),
                "budget": str(self.budget),
            }
            | ({"budgets": self.bands.text} if self.bands else {})
        )

    # TrialHooks: each trained trial is one RunSink -------------------------------------------
    def trial_started(self, trial, spec: ArchSpec, recipe: Recipe, seeds: list[int]) -> None:
        def keep(sink: RunSink) -> None:  # the run exists: on the trial, and closed if interrupted
            self.sinks[trial.number] = sink
            TrialRecord.write(trial, mlflow_run_id=sink.run_id)

        RunSink.open(
            self.tracking, spec, recipe, self.data,
            seeds=seeds,
            command="study",
            run_name=f"t{trial.number}-{count_params(spec)}p",  # short: the runs table shows it whole
            budget=self.budget, experiment_file=self.experiment_file,
            tags={"mlflow.parentRunId": self.parent_id, names.KIND: "trial",
                  "trial_number": str(trial.number), "study_name": self.study.study_name,
                  "storage": self.storage, names.STATE: "RUNNING",
                  names.FIDELITY: "staged" if len(seeds) < recipe.replicas else "full"}
            | ({names.BAND: str(self.bands.of(count_params(spec)))} if self.bands else {}),
            # The sampled knobs, each its own numeric param (MLflow's compare plots can use them).
            params={f"knob.{k}": str(v) for k, v in trial.params.items()}
            | {"trial_number": str(trial.number)},
            created=keep,
        )  # fmt: skip

    def epoch_ended(self, trial, r: EpochResult, per_seed: dict[int, EpochResult]) -> None:
        self.sinks[trial.number].epoch(list(per_seed.values()))

    def seeds_added(self, trial, seeds: list[int], first: ReplicaResults) -> None:
        self.sinks[trial.number].widen(seeds, first)

    def trial_ended(self, end: TrialEnd, model) -> None:
        # Popped only once closed: if an interrupt lands mid-way, finish() still closes the run.
        sink = self.sinks.get(end.number)
        if sink is None:  # interrupted before its run was created: nothing to close
            return
        sink.close(
            end.state, end.result, model, self.data.example() if model is not None else None, end.reason
        )
        del self.sinks[end.number]

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An Optuna callback (the trial is COMPLETE in the storage by now): `@best` follows the
        study's best trial as it improves, not only when the study ends."""
        if trial.state == optuna.trial.TrialState.COMPLETE:
            self.rank_trials(leaderboard(self.study, self.bands))
            for budget, rows in self.answers():
                self.promote_best(rows, budget)

    def answers(self) -> list[tuple[int, list]]:
        """(budget, its leaderboard) for each budget the study answers: its one budget, or a front's
        every budget (the trials under it, whatever their band)."""
        rows = leaderboard(self.study)  # one read of the study, after every trial
        if self.bands is None:
            return [(self.budget, rows)]
        return [(b, [r for r in rows if r.params is not None and r.params < b]) for b in self.bands.budgets]

    def promote_best(self, rows, budget: int) -> None:
        """The first-ranked completed trial (`leaderboard.rank_key`) registered under `budget`, `@best`."""
        best = next(iter(completed(rows)), None)
        if best is not None and best.mlflow_run_id and self._tracked_here(best.mlflow_run_id):
            self._register(best, budget)

    def rank_trials(self, rows) -> None:
        """Each completed trial's place in the study (`rank`: 1 = best, `leaderboard.rank_key`; in a
        front, within its size band) on its run, rewritten as it moves: the study's runs table sorts
        by it (`tracking.views`), so a trial scored on one seed never sorts above a better mean of seeds."""
        for row in completed(rows):
            run_id = row.mlflow_run_id
            if not run_id or run_id in self._elsewhere or self._ranks.get(run_id) == row.rank:
                continue
            if run_id not in self._ranks and not self._tracked_here(run_id):
                self._elsewhere.add(run_id)  # another tracking store's run: never written here
                continue
            RunLog(self.client, run_id).metrics({names.RANK: row.rank})
            self._ranks[run_id] = row.rank

    # End of an invocation -------------------------------------------------------------------
    def close_open_children(self) -> None:
        """Runs still open when the invocation ends (an interrupt that landed while a trial's end
        was being logged): FAILED, interrupted, as the trial is in the study."""
        for sink in self.sinks.values():
            self.client.set_tag(sink.run_id, names.STATE, "FAIL")
            sink.fail(INTERRUPTED)
        self.sinks.clear()

    def finish(self, status: str = "FINISHED") -> None:
        """Summarise the whole study (all invocations) on the parent run and close it."""
        from mnist_search.tracking.plots import plt, study_figures

        self.close_open_children()
        rows = leaderboard(self.study, self.bands)
        feasible, proposed = feasible_share(self.study)
        self.rank_trials(rows)
        tally = trial_tally(self.study)
        metrics = {
            # The counts every display and `report` show (`leaderboard.Tally`): done = trained
            # (to their last epoch) + pruned + failed; over-budget proposals never train.
            "study/trials_done": tally.done,
            "study/trials_trained": tally.trained,
            "study/trials_pruned": tally.pruned,
            "study/trials_failed": tally.failed,
            "study/trials_over_budget": tally.over_budget,
            "study/trials_target_met": sum(r.target_met for r in rows),
            "study/proposals": proposed,
            "study/feasible_share": feasible / proposed if proposed else 0.0,
        }
        for budget, answer in self.answers():
            done = completed(answer)
            if done:
                metrics |= self._best(done[0], budget)
        RunLog(self.client, self.parent_id).metrics(metrics)
        budgets = self.bands.budgets if self.bands else ()
        for path, fig in study_figures(self.study, self.budget, budgets).items():
            self.client.log_figure(self.parent_id, fig, path)
            plt.close(fig)  # pyplot keeps every figure until closed
        self.client.set_terminated(self.parent_id, status)

    def _best(self, best, budget: int) -> dict[str, float]:
        """A budget's best trial on the parent (tags, and registered `@best`): its metrics, under
        `best/` (a front's: `best/bBUDGET/`, the largest budget's also under `best/`)."""
        prefix = f"b{budget}/" if self.bands else ""
        metrics = {"val_acc": best.val_acc, "params": best.params, "trial": best.trial}
        if best.test_acc_min_last3 is not None:
            metrics["test_acc_min_last3"] = best.test_acc_min_last3
        # Workers ending together (the total reached, an interrupt) write these at the same
        # moment: race-tolerant writes (a lost race was a "UNIQUE constraint failed" exit).
        parent = RunLog(self.client, self.parent_id)
        tags = {"trial": str(best.trial), "spec": spec_to_yaml(ArchSpec.model_validate(best.spec))}
        if best.mlflow_run_id and self._tracked_here(best.mlflow_run_id):
            tags["run_id"] = best.mlflow_run_id
            self._register(best, budget)
        elif best.mlflow_run_id:  # the study's storage outlived the store its best trial was tracked in
            tags["run_elsewhere"] = f"{best.mlflow_run_id} (another tracking store; not registered here)"
        parent.tags({f"best_{prefix.replace('/', '_')}{k}": v for k, v in tags.items()})
        found = {f"best/{prefix}{k}": v for k, v in metrics.items()}
        if budget == self.budget and prefix:  # a front's largest budget: also where a study's best is
            parent.tags({f"best_{k}": v for k, v in tags.items()})
            found |= {f"best/{k}": v for k, v in metrics.items()}
        return found

    def _tracked_here(self, run_id: str) -> bool:
        """Whether the run is in this tracking store: a study resumed against another store (its
        journal or database kept, the MLflow store wiped, moved or another server) has trials
        whose runs are not. Any other error is the store failing, and raises."""
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def _register(self, best, budget: int) -> None:
        """A budget's best trial's model into the registry (alias `best`), linked from the parent's note."""
        version = register(
            self.client, best.mlflow_run_id, budget,
            tags={"val_acc": f"{best.val_acc:.6f}", "params": str(best.params), "study": self.study.study_name,
                  "trial": str(best.trial), "seeds": str(best.seeds), "all_seeds": str(best.all_seeds).lower()},
        )  # fmt: skip
        point_best(self.client, budget)
        if budget != self.budget:
            return  # a front's smaller budget: the note names the study's (largest) budget's best
        name = registered_name(budget)
        note = (
            f"Study **{self.study.study_name}** (budget {self.budget:,} parameters).\n\n"
            f"Best trial: [trial {best.trial}](#/experiments/{self.experiment_id}/runs/{best.mlflow_run_id}), "
            f"{best.params:,} parameters, validation accuracy {best.val_acc:.4f}; registered as "
            f"[{name} version {version}](#/models/{name}/versions/{version})."
        )
        RunLog(self.client, self.parent_id).tags({"mlflow.note.content": note})
