"""`mnist-search frontier`: the committed front is what the command writes from the committed
results, and its verdicts are the goals applied to the real verified numbers."""

from __future__ import annotations

import shutil

from mnist_search.cli import app
from mnist_search.workflows.frontier import GOALS, load_points

from .conftest import REPO, one_line_exit_2, runner

RESULTS = REPO / "results"
# The records of superseded points (text only: verify.json / .md, experiment.yaml, spec.yaml) and
# the journal of the GPU-era searches, kept to test how `frontier` reads and labels every kind of
# point (bf16, distilled, Adam, averaged, read from an older table, a mixed-device search).
HISTORY = REPO / "tests" / "fixtures" / "frontier-history"


def history_page() -> str:
    from mnist_search.workflows.frontier import frontier_markdown

    return frontier_markdown(load_points(HISTORY))


def copy_results(tmp_path):
    copy = tmp_path / "results"
    for folder in RESULTS.glob("budget-*"):
        shutil.copytree(folder, copy / folder.name, ignore=shutil.ignore_patterns("*.pt", "*.pt2"))
    return copy


def front_row(page: str, folder: str) -> str:
    """The line of frontier.md's table for `folder` (a < 1,000 point)."""
    return next(line for line in page.splitlines() if line.startswith(f"| < 1,000 | [`{folder}/`]"))


def test_the_committed_front_is_what_the_command_writes(tmp_path):
    copy = copy_results(tmp_path)
    result = runner.invoke(app, ["frontier", "--results", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "frontier.md").read_text() == (RESULTS / "frontier.md").read_text(), (
        "results/frontier.md is stale: run `mnist-search frontier`"
    )
    assert (copy / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (RESULTS / "frontier.png").is_file()
    for point in load_points(copy):  # one printed line per result folder, with its verdict
        assert f"{point.folder} " in result.output and f"{point.params:,} params" in result.output


def test_every_result_folder_is_a_point_under_its_budget_with_its_goal_applied():
    points = load_points(RESULTS)
    assert {p.folder for p in points} == {
        p.name for p in RESULTS.glob("budget-*") if (p / "verify.md").exists()
    }
    assert [p.folder for p in points] == ["budget-1k", "budget-2k", "budget-3k", "budget-5k", "budget-8k"]
    for p in points + load_points(HISTORY):
        assert p.params < p.budget and len(p.seeds) == 3
        per_seed, mean = GOALS[p.budget]
        assert p.goal_met == (
            all(s.min_last3 >= per_seed for s in p.seeds) and (mean is None or p.mean >= mean)
        )
    assert all(p.goal_met for p in points)  # the current front: every goal holds
    # A superseded point, read from its table: 99.41 / 99.48 / 99.47, mean 99.46
    eight = {p.folder: p for p in load_points(HISTORY)}["budget-8k"]
    assert [s.min_last3 for s in eight.seeds] == [0.9941, 0.9948, 0.9947] and eight.goal_met is False
    assert round(eight.mean, 4) == 0.9946


def test_a_point_trained_in_bf16_is_marked_as_such_and_float32_points_are_not():
    """frontier-history/budget-1k-separable-bf16-t19 was verified with `--recipe-from` a bf16 recipe: the
    front says so in its row and its section; the same trial in float32 carries no mark."""
    points = {p.folder: p for p in load_points(HISTORY)}
    bf16, fp32 = points["budget-1k-separable-bf16-t19"], points["budget-1k-separable-cpu"]
    assert (bf16.precision, fp32.precision) == ("bf16", "fp32")
    assert (bf16.study, bf16.trial, bf16.params) == (fp32.study, fp32.trial, fp32.params) == (
        "budget-1k-separable-b1000", 19, 976
    )  # fmt: skip
    page = history_page()
    row = front_row(page, "budget-1k-separable-bf16-t19")
    assert "(bf16)" in row and "98.78 % ± 0.11" in row
    assert "study `budget-1k-separable-b1000`, trained in bf16 (autocast)." in page
    plain = front_row(page, "budget-1k-separable-cpu")
    assert "bf16" not in plain


def test_a_distilled_point_is_marked_with_its_teacher_and_the_others_are_not():
    """frontier-history/budget-1k-separable-kd-t19 was verified with `--recipe-from` a recipe with a
    teacher (results/budget-8k): its row and section say so; the same trial taught by the labels
    alone carries no mark."""
    points = {p.folder: p for p in load_points(HISTORY)}
    kd, plain = points["budget-1k-separable-kd-t19"], points["budget-1k-separable-cpu"]
    assert (kd.teacher, kd.distill) == ("results/budget-8k", (0.9, 4.0))
    assert plain.teacher is None and (kd.study, kd.trial) == (plain.study, plain.trial)
    page = history_page()
    row = front_row(page, "budget-1k-separable-kd-t19")
    assert "(distilled)" in row and "98.69 % ± 0.12" in row
    assert "distilled from `results/budget-8k` (weight 0.9, temperature 4)." in page
    assert all("distilled" not in line for line in page.splitlines() if "budget-1k-separable-cpu/`]" in line)


def test_a_point_trained_with_adam_is_marked_and_the_same_trial_with_sgd_is_not():
    """frontier-history/budget-1k-separable-adam-t19 was verified with `--recipe-from` a recipe with
    `optimizer: adam`: its row and section say so; the SGD run of the same trial does not."""
    points = {p.folder: p for p in load_points(HISTORY)}
    adam, plain = points["budget-1k-separable-adam-t19"], points["budget-1k-separable-cpu"]
    assert (adam.optimizer, plain.optimizer) == ("adam", "sgd") and (adam.trial, adam.params) == (19, 976)
    assert [s.min_last3 for s in adam.seeds] == [0.9857, 0.9883, 0.989] and adam.goal_met is False
    page = history_page()
    row = front_row(page, "budget-1k-separable-adam-t19")
    assert "(Adam)" in row and "98.78 % ± 0.19" in row
    assert "study `budget-1k-separable-b1000`, trained with Adam." in page
    assert "Adam" not in front_row(page, "budget-1k-separable-cpu")


def test_an_averaged_point_is_marked_and_the_same_trial_as_trained_is_not():
    """frontier-history/budget-1k-separable-ema-t19 was verified with `--recipe-from` a recipe with
    `ema: 0.999`: its row and section say it was measured on averaged weights."""
    points = {p.folder: p for p in load_points(HISTORY)}
    ema, plain = points["budget-1k-separable-ema-t19"], points["budget-1k-separable-cpu"]
    assert (ema.ema, plain.ema) == (0.999, None) and (ema.study, ema.trial) == (plain.study, plain.trial)
    assert [s.min_last3 for s in ema.seeds] == [0.9863, 0.986, 0.9859] and ema.goal_met is False
    page = history_page()
    row = front_row(page, "budget-1k-separable-ema-t19")
    assert "(averaged)" in row and "98.63 % ± 0.04" in row
    assert "measured on a moving average of its weights (decay 0.999)." in page
    assert all("averaged" not in line for line in page.splitlines() if "budget-1k-separable-cpu/`]" in line)


def test_a_point_measured_on_its_swa_mean_is_marked(tmp_path):
    """A verify folder whose recipe has `swa_from` (a copy of the ema point's, its recipe
    rewritten): its row is tagged averaged and its section names the epoch the mean starts at."""
    import yaml

    from mnist_search.workflows.frontier import frontier_markdown

    folder = tmp_path / "budget-1k-swa"
    shutil.copytree(HISTORY / "budget-1k-separable-ema-t19", folder)
    experiment = yaml.safe_load((folder / "experiment.yaml").read_text())
    del experiment["recipe"]["ema"]
    experiment["recipe"]["swa_from"] = 11
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    (point,) = load_points(tmp_path)
    assert (point.swa_from, point.ema) == (11, None)
    page = frontier_markdown([point])
    assert "(averaged)" in front_row(page, "budget-1k-swa")
    assert "measured on the mean of its weights from epoch 11 on (SWA)." in page


def test_a_folder_with_verify_json_reads_the_same_from_its_table():
    """verify.json and verify.md are written together: the older folders, read from their table
    alone, are read right (checked on every folder that has both)."""
    from mnist_search.workflows.frontier import _from_json, _from_table

    both = [p for root in (RESULTS, HISTORY) for p in root.glob("budget-*") if (p / "verify.json").exists()]
    assert both, "no committed verify.json"
    for folder in both:
        a, b = _from_json(folder), _from_table(folder)
        assert (a.budget, a.study, a.trial, a.params, a.seeds, a.spec) == (
            b.budget, b.study, b.trial, b.params, b.seeds, b.spec
        )  # fmt: skip
        assert a.command == b.command and abs(a.wall_seconds - b.wall_seconds) <= 3


def test_a_damaged_record_is_a_usage_error_and_nothing_is_written(tmp_path):
    copy = copy_results(tmp_path)
    record = copy / "budget-3k" / "verify.json"
    record.write_text(record.read_text().replace('"exported"', '"exportd"'))
    one_line_exit_2(
        runner.invoke(app, ["frontier", "--results", str(copy)]), "budget-3k/verify.json: not a record"
    )
    (copy / "budget-3k" / "verify.json").unlink()
    table = copy / "budget-3k" / "verify.md"
    table.write_text(table.read_text().replace("Wall time", "Time"))  # now read from its table
    one_line_exit_2(
        runner.invoke(app, ["frontier", "--results", str(copy)]), "budget-3k/verify.md: not a record"
    )
    assert not (copy / "frontier.md").exists() and not (copy / "frontier.png").exists()


def test_no_results_is_a_usage_error(tmp_path):
    one_line_exit_2(runner.invoke(app, ["frontier", "--results", str(tmp_path)]), "no budget-*/verify.md")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_search_behind_a_point_names_every_device_its_trials_trained_on():
    """budget-3k-b3000 in the committed journal: trials 0-14 trained on a lent GPU before trials
    recorded their device, trials 15-22 on the CPU here. The summary (verify.json's `search`, read
    by `frontier`) says both, not "cpu" alone."""
    import optuna

    from mnist_search.search.storage import open_storage
    from mnist_search.workflows.frontier import _search_line
    from mnist_search.workflows.verify import UNRECORDED_DEVICE, search_summary

    storage = open_storage(str(HISTORY / "search.journal"))
    mixed = search_summary(optuna.load_study(study_name="budget-3k-b3000", storage=storage))
    assert mixed["devices"] == ["cpu", UNRECORDED_DEVICE] and mixed["trained"] == 16
    gpu_only = search_summary(optuna.load_study(study_name="budget-5k-b5000", storage=storage))
    assert gpu_only["devices"] == [UNRECORDED_DEVICE]
    folder = next(p for p in load_points(HISTORY) if p.folder == "budget-3k-cpu")
    assert folder.search["devices"] == mixed["devices"]
    assert "on cpu and, for trials made before trials recorded it, a device not recorded" in _search_line(
        folder
    )


def test_a_search_that_left_the_experiment_to_the_default_is_shown_with_it_written_out():
    """budget-1k-cpu's study ran `study --budget 1000` when the default for 1,000 was budget-1k; the
    default is now budget-1k-separable, so the front writes the experiment the study searched (its
    name, budget-1k-b1000, says which) into the command. A command that named one is left as is."""
    from mnist_search.workflows.frontier import _search_line

    points = {p.folder: p for p in load_points(HISTORY)}
    plain = points["budget-1k-cpu"]
    assert "--experiment" not in plain.search["command"]  # as recorded
    assert "`mnist-search study --budget 1000 --experiment budget-1k --trials 1000 " in _search_line(plain)
    separable = points["budget-2k-separable-cpu"]
    assert f"`{separable.search['command']}`" in _search_line(separable)
