"""What a study shows while it runs: the board read from the study's storage (every worker's
trials alike), the plain lines when not on a terminal, and the live display under a real
pseudo-terminal with two workers."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console

from mnist_search.cli import app
from mnist_search.progress import StudyDisplay
from mnist_search.search.board import Board, ProgressWriter, TrialProgress
from mnist_search.search.records import TrialRecord
from mnist_search.search.storage import open_storage
from mnist_search.tracking.watch import ServerWatch
from tests.conftest import TINY, runner, start_mlflow_server, stop_server

RECIPE = {"replicas": 3, "epochs": 15}


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(
        study_name="s", storage=open_storage(str(tmp_path / "j.log")), direction="maximize"
    )


def stored(study, state, value=None, seeds=(0, 1, 2), **attrs):
    """A trial another worker (or an earlier run) ended."""
    study.add_trial(create_trial(
        state=state, value=value, intermediate_values={} if state == TrialState.FAIL else {9: 0.97},
        user_attrs={"feasible": True, "seeds": list(seeds), "recipe": RECIPE, "params": 3928, **attrs},
    ))  # fmt: skip


def running(study, number_params: int, progress: TrialProgress | None):
    trial = study.ask()
    TrialRecord.write(trial, feasible=True, training=True, params=number_params)
    if progress is not None:
        TrialRecord.write(trial, progress=vars(progress))
    return trial


def test_the_board_counts_every_workers_trials_from_the_storage(study):
    stored(study, TrialState.COMPLETE, 0.98, test_acc_min_last3=0.97, seconds=600.0)
    stored(study, TrialState.PRUNED, seconds=300.0)
    stored(study, TrialState.FAIL, fail_reason="NonFiniteLoss: loss is nan")  # its own failure: counts
    stored(study, TrialState.FAIL, fail_reason="interrupted")  # replaced on resume: does not count
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"feasible": False}))  # over budget
    running(study, 5000, None)
    board = Board.read(study, total=10)
    tally = board.tally
    assert (tally.done, tally.trained, tally.pruned, tally.failed, tally.over_budget, tally.interrupted) == (
        3, 1, 1, 1, 1, 1,
    )  # fmt: skip
    assert [r.params for r in board.running] == [5000]
    assert board.best.trial == 0 and board.best.val_acc == 0.98 and board.best.seeds == 3
    assert board.mean_seconds == 450.0
    assert [r.trial for r in board.ended] == [0, 1, 2]


def test_the_eta_shares_the_work_left_among_the_trials_training(study):
    now = 1_000_000.0
    half = TrialProgress(seeds=1, stage=1, epoch=8, epochs=15, share=0.5, val=0.98, since=now - 300, at=now)
    running(study, 5000, half)
    running(study, 6000, half)
    # Before any trial finished: a trial takes what the running ones project (300 s / 0.5 = 600 s).
    board = Board.read(study, total=10, now=now)
    assert board.eta() == pytest.approx((300 + 300 + 8 * 600) / 2)
    # Once trials finished, their mean time: 2 done at 1200 s, 6 left to start, 2 half-way.
    stored(study, TrialState.COMPLETE, 0.99, seconds=1200.0)
    stored(study, TrialState.COMPLETE, 0.98, seconds=1200.0)
    board = Board.read(study, total=10, now=now + 60)  # a minute since they last wrote
    assert board.eta() == pytest.approx((240 + 240 + 6 * 1200) / 2)
    # Nothing measured yet: no figure rather than a made-up one.
    fresh = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    running(fresh, 5000, None)
    assert Board.read(fresh, total=3).eta() is None


def test_with_a_timeout_the_eta_ends_when_the_trials_running_then_finish(study):
    now = time.time()
    half = TrialProgress(seeds=1, stage=1, epoch=8, epochs=15, share=0.5, val=0.98, since=now - 300, at=now)
    running(study, 5000, half)
    running(study, 6000, half)
    board = Board.read(study, total=10, now=now)
    assert board.eta() == pytest.approx(2700) and board.longest_left() == pytest.approx(300)
    display = StudyDisplay(Console(file=io.StringIO()), lambda: board, timeout=600)
    display.started -= 500  # 100 s of the 600 left: the running trials' 300 s then end it
    assert re.fullmatch(r"eta ~0:06:(39|40)", display.eta(board))
    assert StudyDisplay(Console(file=io.StringIO()), lambda: board).eta(board) == "eta ~0:45:00"


def test_a_worker_writes_its_progress_as_the_epochs_go(study):
    trial = study.ask()
    clock = iter([0.0, 1.0, 7.0, 8.0, 30.0]).__next__
    writer = ProgressWriter(trial, epochs=4, clock=clock)
    writer.start(stage=1, seeds=1)  # t=0: written at once
    assert TrialProgress.of(study.trials[0]).share == 0.0
    writer.step(1, 0.2)  # t=1: within WRITE_EVERY of the last write: not written
    assert TrialProgress.of(study.trials[0]).share == 0.0
    writer.step(1, 0.5)  # t=7: written
    assert TrialProgress.of(study.trials[0]).share == pytest.approx(0.5 / 4)
    writer.epoch(1, 0.91)  # t=8: every epoch's end is written, with its validation score
    p = TrialProgress.of(study.trials[0])
    assert (p.epoch, p.share, p.val, p.seeds, p.stage) == (2, 0.25, 0.91, 1, 1)
    assert p.stage_left() == pytest.approx(8.0 * 0.75 / 0.25)


def test_plain_lines_tell_each_trials_end_once_with_the_figures_the_study_ranks_by(study):
    stored(study, TrialState.COMPLETE, 0.97, seeds=(0,))  # ended before this run: not told again
    console = Console(file=io.StringIO(), width=300)
    display = StudyDisplay(console, lambda: Board.read(study, total=4), every=0.05)
    with display:
        stored(study, TrialState.COMPLETE, 0.98, seeds=(3, 4, 5), test_acc_min_last3=0.95, seconds=12.0)
        stored(study, TrialState.PRUNED, seeds=(6,), epochs_run=9, fail_reason="pruned after epoch 9 (val acc 0.9700)",
               seconds=5.0)  # fmt: skip
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = lines
    assert first.startswith("trial 1 COMPLETE 3,928 params val 0.9800 (3 seeds) test min3 0.9500 (12 s) [")
    assert "best #1 3,928p val 0.9800 (3 seeds, -1.40 pts to 99.4%)" in first  # a mean of seeds ranks first
    assert second.startswith(
        "trial 2 PRUNED 3,928 params at epoch 9 (5 s) [3/4: 2 trained, 1 pruned, 0 failed] "
    )
    assert second.endswith("— pruned after epoch 9 (val acc 0.9700)")


def _screen(typescript) -> str:
    """What a terminal showed: escape sequences out, carriage returns as line ends."""
    text = typescript.read_text(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text).replace("\r", "\n")


def _under_pty(args: list[str], tmp_path, timeout: float = 300) -> tuple[int, str]:
    command = shlex.join([sys.executable, "-m", "mnist_search", *args])
    env = os.environ | {"MNIST_SEARCH_STORE": str(tmp_path / "mlruns"), "COLUMNS": "160"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MNIST_SEARCH_JOBS", None)
    proc = subprocess.run(["script", "-qfec", command, str(tmp_path / "typescript")], cwd=tmp_path, env=env,
                          capture_output=True, timeout=timeout, check=False)  # fmt: skip
    return proc.returncode, _screen(tmp_path / "typescript")


STAGED = TINY.replace("recipe: {epochs: 2,", "recipe: {epochs: 3, replicas: 3,")


@pytest.mark.slow
def test_two_workers_show_live_a_line_per_running_trial_the_counts_and_an_eta(tmp_path, data_dir):
    (tmp_path / "tiny.yaml").write_text(STAGED)
    code, screen = _under_pty(["study", "--experiment", "tiny.yaml", "--trials", "4", "--jobs", "2",
                               "--limit-train", "3000", "--data-dir", str(data_dir), "--device", "cpu",
                               "--no-verify"], tmp_path)  # fmt: skip
    assert code == 0, screen[-3000:]
    assert "2 worker processes, 1 torch thread each" in screen
    rows = set(re.findall(r"^#(\d+) [\d,]+p +1 seed +ep (\d)/3 ", screen, re.MULTILINE))
    assert {n for n, _ in rows} >= {"0", "1", "2", "3"}, rows  # every trial had its line
    assert any(epoch in ("2", "3") for _, epoch in rows)  # and moved through its epochs
    assert re.search(r"^#\d+ [^\n]*\n#\d+ [^\n]*\ndone ", screen, re.MULTILINE)  # two trials at once
    assert re.search(
        r"^done [0-4]/4: \d trained, \d pruned, \d failed, \d+ over budget \| best ", screen, re.MULTILINE
    )
    assert re.search(r"eta ~\d:\d\d:\d\d", screen)
    assert re.search(r"best #\d+ [\d,]+p val 0\.\d{4} \(\d seeds?, [+-]\d+\.\d\d pts to 99\.4%\)", screen)
    assert "4/4 trials done by 2 workers" in screen


@pytest.mark.slow
def test_the_header_under_a_terminal_says_a_run_resumes_a_study(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["study", "--experiment", "tiny.yaml", "--epochs", "1", "--limit-train", "500", "--data-dir",
            str(data_dir), "--device", "cpu", "--no-verify", "--jobs", "1"]  # fmt: skip
    first = runner.invoke(app, [*args, "--trials", "1"])
    assert first.exit_code == 0, first.output
    code, screen = _under_pty([*args, "--trials", "2"], tmp_path)
    assert code == 0, screen[-3000:]
    assert re.search(
        r"^study tiny-b8000: resuming 1 trial \(1 done: 1 trained, 0 pruned, 0 failed; 0 interrupted and trained again, "
        r"0 over budget\); 1/2 trials done; on cpu; ", screen, re.MULTILINE,
    ), screen[:2000]  # fmt: skip
    assert "done 2/2: 2 trained, 0 pruned, 0 failed, 0 over budget" in screen


@pytest.mark.slow
def test_the_display_says_when_the_tracking_server_stops_answering_and_when_it_is_back(study, tmp_path):
    """A real `mlflow server` watched by the display: no warning while it answers, a plain line
    naming it when it is killed (MLflow's client is retrying meanwhile), one when it is back."""
    proc, uri = start_mlflow_server(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art", tmp_path / "s.log")
    port = int(uri.rsplit(":", 1)[1])
    watch = ServerWatch(uri, every=0.0, timeout=2.0)
    console = Console(file=io.StringIO(), width=300)
    display = StudyDisplay(console, lambda: Board.read(study, total=2), every=0.05, watch=watch.warning)
    try:
        assert watch.warning() is None
        display.show(Board.read(study, total=2))
        stop_server(proc, signal.SIGKILL)
        display.show(Board.read(study, total=2))
        display.show(Board.read(study, total=2))  # still down: not said twice
        proc, _ = start_mlflow_server(
            f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art", tmp_path / "s2.log", port=port
        )
        display.show(Board.read(study, total=2))
    finally:
        stop_server(proc)
    lines = console.file.getvalue().splitlines()
    assert lines[0].startswith(f"warning: tracking server {uri} not answering for ")
    assert lines[0].endswith("MLflow retries each write for up to ~35 s, then the trial fails")
    assert lines[1:] == ["tracking server answers again"]
    live = StudyDisplay(Console(file=io.StringIO()), lambda: Board.read(study, total=2))
    assert "warning: tracking server" in str(
        live.render(Board.read(study, total=2), lines[0][9:]).renderables[-1]
    )
