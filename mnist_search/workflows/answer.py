"""A study ends with an answer: its best trial verified as `verify` verifies (all 60,000 training
images, the recipe's epochs, 3 seeds, the test set), registered (`@champion` when the target held
on the full protocol), exported next to the store, and told in one line: the claim.

An interrupted verify resumes with the same command (its finished seed runs are read back from
MLflow, `verify._reuse_finished`); a verify that finished is recorded on the study, so running
the command again repeats the claim without training.

A front (`search.bands`) answers each of its budgets: the best trial under each (whatever its band)
verified, registered under that budget, exported to mlruns/models/STUDY/budget-1k (2k, ...), a claim
line each; then the front itself, frontier.md and frontier.png beside them, written by
`workflows.frontier` from those verify records (as `mnist-search frontier` writes results/'s).
"""

from __future__ import annotations

from pathlib import Path

from mnist_search.core.config import TARGET, VERIFY_SEEDS
from mnist_search.core.errors import NonFiniteLoss, RunFailed
from mnist_search.core.settings import store_dir
from mnist_search.search.leaderboard import completed, leaderboard
from mnist_search.search.records import StudyRecord
from mnist_search.tracking.registry import registered_name
from mnist_search.workflows.outcome import Outcome, fault
from mnist_search.workflows.verify import (
    FULL_TRAIN_IMAGES,
    VerifyHooks,
    VerifyReport,
    VerifyRequest,
    best_seed,
    run_verify,
)


def export_dir(study_name: str) -> Path:
    """Where a study's verified model goes: beside the local store (mlruns/models/STUDY)."""
    return store_dir() / "models" / study_name


def claim(report: VerifyReport, out_dir: Path | None) -> str:
    """One line: params, test accuracy mean ± std over the seeds, the worst seed's min of its last 3
    epochs, whether the target held (and on what protocol), the registry and the export."""
    best = report.best
    worst = min(r.min_last3 for r in best.runs)
    held = (
        f"target {TARGET:.1%} held in every seed"
        if best.held
        else f"target {TARGET:.1%} not held (worst seed {worst:.2%})"
    )
    line = (
        f"verified trial {best.trial}: {best.params:,} params, test {best.mean:.2%} ± {best.std * 100:.2f} "
        f"({len(best.runs)} seeds), worst seed's min of last 3 epochs {worst:.2%}; {held}"
    )
    if report.protocol is not None and not report.protocol.full:
        line += f" on {report.protocol}"
    if report.version is not None:
        alias = "@champion" if report.champion else "not @champion"
        line += f"; {registered_name(report.budget)} version {report.version} ({alias})"
    if out_dir is not None:
        line += f"; exported to {out_dir} (seed {best_seed(best).seed})"
    return line


def has_answer_to_verify(study) -> bool:
    return bool(completed(leaderboard(study)))


def announce(session) -> str:
    """The line before the verify trains: what, on what protocol, and how to stop or skip it."""
    images = min(session.request.limit_train or FULL_TRAIN_IMAGES, FULL_TRAIN_IMAGES)
    if session.bands is not None:
        what = f"the best trial under each of {len(session.bands.budgets)} budgets"
    else:
        best = next(iter(completed(leaderboard(session.study))))
        what = f"trial {best.trial} ({best.params:,} params)"
    return (
        f"verifying {what}: {images:,} training images, "
        f"{session.recipe.epochs} epochs, {VERIFY_SEEDS} seeds, scored on the test set "
        "(--no-verify skips this; Ctrl-C stops it and the same command resumes it)"
    )


def budget_folder(budget: int) -> str:
    """A budget's results folder, as results/ names them: budget-1k, budget-2500."""
    return f"budget-{budget // 1000}k" if budget % 1000 == 0 else f"budget-{budget}"


def verify_front(session, hooks: VerifyHooks) -> Outcome:
    """Verify a front's best trial under each of its budgets, smallest first (a trial that answers
    several budgets is trained once: its seed runs are reused), then write the front from what was
    verified. Resumes as `verify_best` does."""
    from mnist_search.workflows.frontier import write_frontier

    req, study, bands = session.request, session.study, session.bands
    end = Outcome()
    done = dict(StudyRecord.of(study).verified or {})
    for budget in bands.budgets:
        key = f"b{budget}"
        best = next(iter(completed(leaderboard(study, under=budget))), None)
        if best is None:
            end.say(f"< {budget:,}: no completed trial under this budget to verify")
            continue
        if done.get(key, {}).get("trial") == best.trial and done[key].get("claim"):
            end.say(f"< {budget:,}: {done[key]['claim']}")
            continue
        out_dir = export_dir(session.name) / budget_folder(budget)
        request = VerifyRequest(
            study_name=session.name, storage=session.storage_url, tracking_uri=session.tracking.uri,
            device=req.device, data_dir=req.data_dir, limit_train=req.limit_train, trials=(best.trial,),
            seeds=VERIFY_SEEDS, epochs=session.recipe.epochs, jobs=req.jobs, out_dir=out_dir, resume=True,
            command=req.command, budget=budget,
        )  # fmt: skip
        try:
            report = run_verify(request, hooks)
        except (NonFiniteLoss, RunFailed, KeyboardInterrupt) as exc:
            stopped = fault(
                exc, "the verify stopped; run the same command to resume it (finished seeds are kept)"
            )
            end.lines += stopped.lines
            return end.with_code(stopped.code)
        line = claim(report, out_dir)
        done[key] = {"trial": best.trial, "claim": line, "run_id": report.parent_run_id}
        StudyRecord.write(study, verified=done)
        end.say(report.table).say(f"< {budget:,}: {line}")
    if done:
        folder = export_dir(session.name)
        write_frontier(folder)
        _log_front(session.tracking.client, StudyRecord.of(study).mlflow_parent_run_id, folder)
        end.say(f"the front: {folder / 'frontier.md'} and {folder / 'frontier.png'}")
    return end


def _log_front(client, parent: str | None, folder: Path) -> None:
    """The written front onto the study's parent run, beside the search's own plots (its verified
    points, goals and the public results); not when the parent is in another tracking store."""
    import mlflow

    try:
        if parent and client.get_run(parent):
            for name in ("frontier.md", "frontier.png"):
                client.log_artifact(parent, str(folder / name), "front")
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def verify_best(session, hooks: VerifyHooks) -> Outcome:
    """Verify `session`'s study's best trial (a `workflows.study.StudySession` that ran or had
    ended): the claim line, or how the verify stopped (exit 130: run the command again to resume)."""
    if session.bands is not None:
        return verify_front(session, hooks)
    req, study = session.request, session.study
    best = next(iter(completed(leaderboard(study))), None)
    if best is None:
        return Outcome().say(f"study {session.name}: no completed trial to verify")
    done = StudyRecord.of(study).verified or {}
    if done.get("trial") == best.trial and done.get("claim"):
        return Outcome().say(done["claim"])
    out_dir = export_dir(session.name)
    request = VerifyRequest(
        study_name=session.name, storage=session.storage_url, tracking_uri=session.tracking.uri,
        device=req.device, data_dir=req.data_dir, limit_train=req.limit_train, trials=(best.trial,),
        seeds=VERIFY_SEEDS, epochs=session.recipe.epochs, jobs=req.jobs, out_dir=out_dir, resume=True,
        command=req.command,
    )  # fmt: skip
    try:
        report = run_verify(request, hooks)
    except (NonFiniteLoss, RunFailed, KeyboardInterrupt) as exc:
        return fault(exc, "the verify stopped; run the same command to resume it (finished seeds are kept)")
    line = claim(report, out_dir)
    StudyRecord.write(study, verified={"trial": best.trial, "claim": line, "run_id": report.parent_run_id})
    end = Outcome()
    if report.reused:
        end.say(f"{report.reused} seed run(s) reused: finished by the interrupted verify")
    return end.say(report.table).say(line)
