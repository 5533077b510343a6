"""Searches for the Pareto front (issue 17) on a lent GPU, several studies side by side.

The GPU machine has no MLflow, so this runs what `mnist-search study` runs through the parts that
need none: the same study (`search.open_study`: sampler, pruner, budget record) and the same
objective (`objective.Objective`: the budget check, packed seeds, every record on the trial), in
one journal file that comes back and that `mnist-search verify --storage <journal>` reads here.
One tiny net cannot fill a GPU (a training step is bound by kernel launches), so several worker
processes per study share it, one torch thread each.

A worker stops starting trials once its longest trial so far would not end before the deadline;
at the deadline, workers still training are interrupted (their trials FAIL "interrupted", which
`study` does not count and trains again if the study is resumed).

    python tests/device/frontier_search.py --journal OUT/frontier.journal --minutes 8 \\
        --study budget-1k:1000:4 --study budget-2k:2000:4   # experiment:budget:workers
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import signal
import sys
import time

import optuna
import torch
from optuna.trial import TrialState

from mnist_search.core.config import load_experiment
from mnist_search.core.data import load_mnist
from mnist_search.search.objective import Objective, TrialFailed
from mnist_search.search.records import INTERRUPTED, TrialRecord
from mnist_search.search.storage import open_storage
from mnist_search.search.studies import default_study_name, open_study

GRACE_SECONDS = 20  # after the deadline, for interrupted trials to write their state


def _open(journal: str, experiment: str, budget: int, epochs: int | None, seed: int):
    exp = load_experiment(experiment)
    recipe = exp.recipe.model_copy(update={"epochs": epochs or exp.recipe.epochs})
    command = shlex.join(["python3", *sys.argv])  # recorded on the study (`verify` reports it)
    study = open_study(
        open_storage(journal),
        default_study_name(exp, budget),  # as `mnist-search study` names it
        exp,
        budget,
        recipe.epochs,
        seed,
        experiment,
        command,
    )
    return exp, recipe, study


def work(journal, experiment, budget, deadline, device, epochs, limit_train, seed) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    exp, recipe, study = _open(journal, experiment, budget, epochs, seed)
    data = load_mnist(None, val_size=recipe.val_size, limit_train=limit_train).to(device)
    longest = 0.0

    def until_deadline(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal longest
        record = TrialRecord.of(trial)
        if record.feasible and record.seconds:
            longest = max(longest, record.seconds)
            print(
                f"{study.study_name} t{trial.number} {record.params:,}p {trial.state.name} "
                f"val {trial.value if trial.value is not None else float('nan'):.4f} "
                f"epochs {record.epochs_run} {record.seconds:.0f} s {record.fail_reason or ''}",
                flush=True,
            )
        if time.time() + 1.1 * longest > deadline:
            study.stop()

    objective = Objective(exp.search, recipe, budget, data, torch.device(device), seed=seed)
    try:
        study.optimize(objective, callbacks=[until_deadline], catch=(TrialFailed,), gc_after_trial=False)
    except KeyboardInterrupt:
        pass


def summary(study: optuna.Study, top: int = 6) -> str:
    trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if TrialRecord.of(t).feasible and TrialRecord.of(t).seconds is not None]
    done = sorted((t for t in trained if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    lines = [
        (
            f"{study.study_name}: {len(trials)} proposals, {len(trained)} trained "
            f"({len(done)} complete, {sum(t.state == TrialState.PRUNED for t in trained)} pruned, "
            f"{sum(t.state == TrialState.FAIL for t in trained)} failed)"
        )
    ]
    for t in done[:top]:
        r = TrialRecord.of(t)
        lines.append(
            f"  t{t.number:<3} {r.params:>6,}p val {t.value:.4f} worst {r.val_acc_worst or float('nan'):.4f} "
            f"{r.seconds:5.0f} s lr {t.params.get('lr', float('nan')):.3f} bs {t.params.get('batch_size', '-')} "
            f"spec {r.spec['stages']} t {r.spec['transitions']} dropout {r.spec['dropout']:.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--journal", required=True)
    ap.add_argument("--minutes", type=float, required=True, help="start no trial that would end later")
    ap.add_argument("--study", action="append", required=True, help="experiment:budget:workers")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's (smoke runs: fewer)")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.time()
    deadline = start + 60 * args.minutes
    plan = []
    for entry in args.study:
        experiment, budget, workers = entry.split(":")
        _, _, study = _open(
            args.journal, experiment, int(budget), args.epochs, args.seed
        )  # created once, here
        plan.append((experiment, int(budget), int(workers), study))
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=work,
            args=(
                args.journal,
                experiment,
                budget,
                deadline,
                args.device,
                args.epochs,
                args.limit_train,
                args.seed,
            ),
        )
        for experiment, budget, workers, _ in plan
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    print(f"{len(procs)} workers on {args.device}, deadline in {args.minutes} min", flush=True)
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join(timeout=GRACE_SECONDS)
        if p.is_alive():
            p.terminate()
    storage = open_storage(args.journal)
    for *_, study in plan:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # killed mid-write
            TrialRecord.store(storage, t._trial_id, fail_reason=INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        print(summary(optuna.load_study(study_name=study.study_name, storage=storage)), flush=True)
    print(f"wall {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
