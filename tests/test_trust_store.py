"""Trust, round 2: a full disk, a corrupt file, a run of failures, a second Ctrl-C, a read-only
store. Each case ends in one line (or a correct recovery), never a traceback, and leaves a store
that the next command opens and a study that resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest

from mnist_search.cli import app
from mnist_search.search.storage import open_storage

from .conftest import TINY, local_client, one_line_exit_2, poll, runner, runs_of, start_cli

TORN = b'{"op_code":0,"worker_id":"dead","study_na'  # a record cut off mid-write, no newline


def tiny_args(data_dir, trials=1, *extra) -> list[str]:
    return ["study", "--experiment", "tiny.yaml", "--trials", str(trials), "--epochs", "1", "--limit-train",
            "1000", "--data-dir", str(data_dir), "--device", "cpu", "--quiet", "--no-verify", *extra]  # fmt: skip


def invoked(args, code=0):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def journal(store: Path) -> Path:
    return store / "optuna-journal.log"


def completed_trials(path: Path, name="tiny-b8000") -> int:
    study = optuna.load_study(study_name=name, storage=open_storage(str(path), writable=False))
    return sum(t.state.name == "COMPLETE" for t in study.trials)


@pytest.fixture
def tiny(store, tmp_path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    return store


# --- 1. a full disk --------------------------------------------------------------------------------


@contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of `size` mounted at `where` (root only; CI runs as root); skips where mounting is
    not allowed, saying why."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk: {mounted.stderr.strip() or 'not root'}")
    try:
        yield lambda new_size: subprocess.run(
            ["mount", "-o", f"remount,size={new_size}", str(where)], check=True, capture_output=True
        )
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.slow
def test_a_disk_too_small_for_a_store_is_one_line_and_leaves_nothing_then_the_rerun_works(
    tmp_path, data_dir, monkeypatch
):
    disk = tmp_path / "x"
    (tmp_path / "tiny.yaml").write_text(TINY)
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(disk / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with small_disk(disk, "300k") as resize:
        line = one_line_exit_2(
            runner.invoke(app, tiny_args(data_dir)), str(disk), "MB free", "needs at least 20 MB"
        )
        assert "MNIST_SEARCH_STORE" in line
        assert list(disk.iterdir()) == []  # nothing written, not even the store's folder

        # The check passed (a lower limit), then the disk filled while MLflow built its database.
        monkeypatch.setattr("mnist_search.core.diskspace.NEEDED_BYTES", 0)
        one_line_exit_2(
            runner.invoke(app, tiny_args(data_dir)), "the disk filled while creating the MLflow store"
        )
        assert not (disk / "mlruns" / "mlflow.db").exists()  # never half-built
        assert [p.name for p in (disk / "mlruns").iterdir() if "building" in p.name] == []

        monkeypatch.undo()  # the real limit again, and the same environment
        monkeypatch.setenv("MNIST_SEARCH_STORE", str(disk / "mlruns"))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.chdir(tmp_path)
        resize("50m")
        invoked(tiny_args(data_dir))
        assert completed_trials(journal(disk / "mlruns")) == 1


@pytest.mark.slow
def test_too_little_room_before_a_trial_stops_the_study_with_exit_2_and_keeps_what_is_done(
    tiny, data_dir, monkeypatch
):
    invoked(tiny_args(data_dir, 1))
    from mnist_search.core import diskspace
    from mnist_search.workflows import study

    def nearly_full(folder, what, needed=None):  # the disk filled since the study started
        more = diskspace.free_bytes(folder) + 1 if what == "a trial" else needed
        diskspace.check_space(folder, what, more)

    monkeypatch.setattr(study, "check_space", nearly_full)
    line = one_line_exit_2(runner.invoke(app, tiny_args(data_dir, 2)), "a trial needs at least", str(tiny))
    assert line.endswith("the study stopped, its 1 done trial(s) kept")
    assert completed_trials(journal(tiny)) == 1  # nothing of the next trial was trained or counted
    monkeypatch.undo()
    monkeypatch.setenv("MNIST_SEARCH_STORE", str(tiny))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tiny.parent)
    invoked(tiny_args(data_dir, 2))  # room again: the study goes on
    assert completed_trials(journal(tiny)) == 2


# --- 2. a corrupt MLflow database ----------------------------------------------------------------


@pytest.mark.slow
def test_a_corrupt_mlflow_database_is_one_line_naming_it_and_the_fix_it_gives_works(tiny, data_dir):
    from mnist_search.tracking.client import create_sqlite_store

    db = tiny / "mlflow.db"
    create_sqlite_store(db)
    with db.open("r+b") as f:  # printf GARBAGE | dd of=mlruns/mlflow.db conv=notrunc
        f.write(b"GARBAGE")
    line = one_line_exit_2(runner.invoke(app, tiny_args(data_dir)), str(db), "not a readable MLflow database")
    assert "file is not a database" in line
    if journal(tiny).exists():  # the study storage holds no study: nothing was started
        assert optuna.get_all_study_names(open_storage(str(journal(tiny)), writable=False)) == []
    move = re.search(r"\(mv (\S+) (\S+)\)", line)
    Path(move.group(1)).rename(move.group(2))  # what the line says to do, then the command again
    again = start_cli(tiny_args(data_dir), tiny.parent)  # a new process, as a user reruns it
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert completed_trials(journal(tiny)) == 1


# --- 3, 4. bad journal lines, and files that are not journals -----------------------------------


@pytest.mark.slow
def test_a_bad_middle_line_keeps_every_study_readable_up_to_it_and_repair_lets_the_study_go_on(
    tiny, data_dir
):
    invoked(tiny_args(data_dir, 2))
    lines = journal(tiny).read_bytes().splitlines(keepends=True)
    # The bad line lands right after the first trained trial's end: what precedes it is a study
    # with no trial left RUNNING (a line in the middle of a trial would leave that trial to a
    # worker that, here in one process, is still alive).
    ends = [
        i
        for i, line in enumerate(lines)
        if json.loads(line)["op_code"] == 6 and json.loads(line)["state"] == 1
    ]
    cut = ends[0] + 1
    damaged = b"".join(lines[:cut]) + b"{garbage\n" + b"".join(lines[cut:])
    journal(tiny).write_bytes(damaged)

    report = invoked(["report", "--json"])  # a reader: warns, reads up to the line, changes nothing
    assert f"line {cut + 1} is not a journal record" in report.stderr
    assert report.stderr.startswith("warning: ") and len(report.stderr.strip().splitlines()) == 1
    json.loads(report.stdout)
    assert journal(tiny).read_bytes() == damaged

    line = one_line_exit_2(
        runner.invoke(app, tiny_args(data_dir, 3)), f"line {cut + 1}", "mnist-search repair"
    )
    assert journal(tiny).read_bytes() == damaged  # a writer refused before writing

    repaired = invoked(["repair"])
    assert f"kept its first {cut:,} records" in repaired.stdout
    (backup,) = tiny.glob("optuna-journal.log.bad-*")
    assert backup.read_bytes() == damaged
    assert journal(tiny).read_bytes() == b"".join(lines[:cut])
    assert "nothing to repair" in invoked(["repair"]).stdout

    invoked(tiny_args(data_dir, 3))  # the study goes on from the records kept
    study = optuna.load_study(study_name="tiny-b8000", storage=open_storage(str(journal(tiny))))
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 1
    assert line


@pytest.mark.parametrize("newline", [True, False], ids=["yaml", "yaml-without-last-newline"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_is(tiny, tmp_path, data_dir, newline):
    other = tmp_path / "some.yaml"
    other.write_text("name: budget-8k\nsearch: {}" + ("\n" if newline else ""))
    before = other.read_bytes()
    one_line_exit_2(
        runner.invoke(app, ["report", "--storage", str(other)]), str(other), "not a study storage"
    )
    one_line_exit_2(
        runner.invoke(app, [*tiny_args(data_dir), "--storage", str(other)]), "not a study storage"
    )
    one_line_exit_2(runner.invoke(app, ["repair", "--storage", str(other)]), "not a study storage")
    assert other.read_bytes() == before


def test_a_folder_given_as_storage_is_named_a_folder(tiny, tmp_path, data_dir):
    one_line_exit_2(runner.invoke(app, ["report", "--storage", str(tmp_path)]), "a folder")
    one_line_exit_2(runner.invoke(app, [*tiny_args(data_dir), "--storage", str(tmp_path)]), "a folder")


# --- 5. a study whose every trial fails ------------------------------------------------------------


@pytest.mark.slow
def test_a_study_that_completes_no_trial_exits_1_and_every_count_says_failed(tiny, tmp_path, data_dir):
    (tmp_path / "nan.yaml").write_text(  # a learning rate that makes the loss NaN, whatever the spec
        "search:\n  stages: [[{low: 4, high: 8}], [{low: 4, high: 8}]]\n  transitions: [{low: 4, high: 8}]\n"
        "  batchnorm: [false]\nrecipe: {lr: 1.0e+12, momentum: 0.9, epochs: 1}\n"
    )
    args = tiny_args(data_dir, 1)
    args[args.index("tiny.yaml")] = "nan.yaml"
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: study nan-b8000: no trial completed: 1 failed (first: trial 0, ")
    assert "training loss became" in last and "Traceback" not in result.output
    assert "1/1 trials done (0 trained, 0 pruned, 1 failed)" in result.stdout

    report = invoked(["report", "--study", "nan-b8000"])
    assert "No completed trial yet, so no Pareto front." in report.stdout
    assert "1 trial done: 0 trained, 0 pruned, 1 failed" in report.stdout
    assert "reason" in report.stdout and "training loss became" in report.stdout
    data = json.loads(invoked(["report", "--study", "nan-b8000", "--json"]).stdout)
    assert [r["rank"] for r in data["trials"]] == [0]  # a failed trial has no rank
    assert data["counts"] | {"over_budget": 0} == {
        "done": 1, "trained": 0, "pruned": 0, "failed": 1, "over_budget": 0, "interrupted": 0
    }  # fmt: skip

    client = local_client(tiny)
    (parent,) = runs_of(client, "mnist-search-studies", "study")
    metrics = parent.data.metrics
    assert (metrics["study/trials_done"], metrics["study/trials_trained"], metrics["study/trials_failed"]) == (
        1, 0, 1,
    )  # fmt: skip


# --- 6. Ctrl-C, twice, with workers ----------------------------------------------------------------


def start_in_own_group(args, tmp_path) -> subprocess.Popen:
    """`mnist-search ARGS` as a terminal's foreground job: its own process group, which a Ctrl-C
    reaches whole (the command and its workers alike)."""
    env = os.environ | {"MNIST_SEARCH_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "mnist_search", *args], env=env, cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_twice_is_one_message_and_every_interrupted_run_is_failed_interrupted(
    tmp_path, data_dir, jobs
):
    (tmp_path / "tiny.yaml").write_text(TINY)
    args = tiny_args(data_dir, 4, "--jobs", str(jobs))
    args[args.index("1000")], args[args.index("--epochs") + 1] = "6000", "3"  # long enough to be interrupted
    proc = start_in_own_group(args, tmp_path)
    store = tmp_path / "mlruns"

    def training() -> bool | None:
        study = optuna.load_study(
            study_name="tiny-b8000", storage=open_storage(str(journal(store)), writable=False)
        )
        running = [t for t in study.trials if t.state.name == "RUNNING" and t.user_attrs.get("mlflow_run_id")]
        return True if len(running) >= jobs else None

    poll(training, "no trial started training")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # and again, while the first one's cleanup runs
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len(re.findall(r"^interrupted: ", stderr, re.MULTILINE)) == 1, stderr

    study = optuna.load_study(
        study_name="tiny-b8000", storage=open_storage(str(journal(store)), writable=False)
    )
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs.get("fail_reason") == "interrupted" for t in failed)
    client = local_client(store)
    for trial in failed:
        if run_id := trial.user_attrs.get("mlflow_run_id"):
            run = client.get_run(run_id)
            assert (run.info.status, run.data.tags.get("failure")) == ("FAILED", "interrupted")
    assert all(r.info.status != "RUNNING" for r in runs_of(client, "mnist-search-studies"))

    again = start_in_own_group(args, tmp_path)  # the same command resumes
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "4/4 trials done" in out


# --- 7. read-only commands never write -----------------------------------------------------------


@pytest.mark.slow
def test_report_reads_a_torn_journal_without_touching_it_and_the_next_study_cuts_it(tiny, data_dir):
    invoked(tiny_args(data_dir, 1))
    with journal(tiny).open("ab") as f:
        f.write(TORN)
    before = journal(tiny).read_bytes()
    report = invoked(["report", "--json"])
    assert "partial last record" in report.stderr and "was not read" in report.stderr
    assert json.loads(report.stdout)["trials"][0]["state"] == "COMPLETE"
    assert journal(tiny).read_bytes() == before and not list(tiny.glob("*.torn-*"))

    invoked(tiny_args(data_dir, 2))
    (backup,) = tiny.glob("optuna-journal.log.torn-*")
    assert backup.read_bytes() == before
    assert completed_trials(journal(tiny)) == 2


@pytest.mark.slow
def test_report_and_export_work_on_a_read_only_store(tiny, tmp_path, data_dir):
    invoked(tiny_args(data_dir, 1))
    ro = subprocess.run(["mount", "--bind", "-o", "ro", str(tiny), str(tiny)], capture_output=True, text=True,
                        check=False)  # fmt: skip
    if ro.returncode != 0:
        pytest.skip(f"cannot mount the store read-only here: {ro.stderr.strip() or 'not root'}")
    try:
        assert _really_read_only(tiny)
        report = invoked(["report", "--json"])
        assert json.loads(report.stdout)["trials"][0]["state"] == "COMPLETE"
        exported = invoked(["export", "--out", str(tmp_path / "export")])
        assert "exported to" in exported.stdout and (tmp_path / "export" / "model.pt2").is_file()
        one_line_exit_2(runner.invoke(app, tiny_args(data_dir, 2)), "Read-only file system")
    finally:
        subprocess.run(["umount", str(tiny)], check=False, capture_output=True)


def _really_read_only(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return True
    return False


# --- 8. a tracking server: slow to answer at the start, gone mid-study -----------------------------


class SlowHealth(BaseHTTPRequestHandler):
    delay = 7.0

    def do_GET(self):
        time.sleep(self.delay)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_the_start_up_check_waits_for_a_server_that_answers_slowly():
    from mnist_search.tracking.client import check_tracking

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        check_tracking(f"http://127.0.0.1:{server.server_port}")  # 7 s to answer: not "unreachable"
        assert time.monotonic() - start >= SlowHealth.delay
    finally:
        server.shutdown()


# --- 9. smaller cases ------------------------------------------------------------------------------


def test_a_data_dir_that_does_not_exist_leaves_nothing_behind(store, tmp_path):
    missing = tmp_path / "nodata"
    one_line_exit_2(runner.invoke(app, ["study", "--data-dir", str(missing), "--no-verify"]), "not found")
    assert not missing.exists()


@pytest.mark.slow
def test_report_of_a_study_that_does_not_exist_names_the_ones_that_do(tiny, data_dir):
    invoked(tiny_args(data_dir, 1))
    one_line_exit_2(runner.invoke(app, ["report", "--study", "nosuch"]), "no such study", "tiny-b8000")


def test_export_of_a_trial_that_is_not_a_number_says_so(tiny):
    one_line_exit_2(runner.invoke(app, ["export", "--trial", "abc"]), "--trial abc: not a number")


@pytest.mark.slow
def test_a_study_whose_storage_was_deleted_is_not_started_again_beside_its_runs(tiny, data_dir):
    invoked(tiny_args(data_dir, 1))
    client = local_client(tiny)
    before = runs_of(client, "mnist-search-studies")
    journal(tiny).unlink()
    one_line_exit_2(runner.invoke(app, tiny_args(data_dir, 1)), "holds its runs", "another --study-name")
    assert len(runs_of(client, "mnist-search-studies")) == len(before)  # no second parent, no duplicate
    invoked([*tiny_args(data_dir, 1), "--study-name", "fresh"])


def test_a_number_in_quotes_is_refused_and_a_bare_exponent_is_a_number(tmp_path):
    from mnist_search.core.config import ConfigError, load_experiment

    path = tmp_path / "e.yaml"
    path.write_text("spec:\n  stages: [[8]]\nrecipe:\n  lr: 5e-4\n  epochs: 3\n")
    assert load_experiment(path).recipe.lr == 0.0005  # YAML 1.1 alone would hand over the text '5e-4'
    path.write_text('spec:\n  stages: [[8]]\nrecipe:\n  epochs: "3"\n')
    with pytest.raises(
        ConfigError, match=r"recipe.epochs: Input should be a valid integer \(got the text '3'"
    ):
        load_experiment(path)
