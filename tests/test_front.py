"""`mnist-search front`: one two-objective study over every size (validation up, parameters down),
trials judged within their size band, and the best under each budget verified."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from mnist_search.cli import app
from mnist_search.core.errors import BudgetError
from mnist_search.search.bands import Bands
from mnist_search.search.fidelity import BandMedian, contends, same_band
from mnist_search.search.leaderboard import completed, leaderboard
from mnist_search.search.records import StudyRecord
from mnist_search.search.studies import OBJECTIVE_NAME, PARAMS_NAME, load_study
from tests.conftest import local_client, one_line_exit_2, runner

BANDS = Bands((1000, 2000, 8000))


def test_budgets_parse_into_ascending_bands_with_the_largest_always_in():
    assert Bands.parse("2000, 1000", 8000).budgets == (1000, 2000, 8000)
    assert Bands.parse("1_000,8000", 8000).budgets == (1000, 8000)
    assert Bands.parse("", 8000).budgets == (8000,)
    for text, message in [
        ("1000,abc", "--budgets 1000,abc: give whole numbers separated by commas"),
        ("1000,9000", "--budgets 1000,9000: 9,000 is above --max-params 8,000"),
        ("0,1000", "give distinct positive numbers"),
    ]:
        with pytest.raises(BudgetError, match=re.escape(message)):
            Bands.parse(text, 8000)


def test_a_trial_belongs_to_the_smallest_budget_it_is_under():
    assert [BANDS.of(p) for p in (0, 999, 1000, 1999, 2000, 7999, 8000, None)] == [
        1000, 1000, 2000, 2000, 8000, 8000, None, None,
    ]  # fmt: skip
    assert [BANDS.lower(b) for b in BANDS.budgets] == [0, 1000, 2000]
    assert [BANDS.label(b) for b in BANDS.budgets] == ["< 1,000", "1,000-1,999", "2,000-7,999"]


def _trial(number, params, val, curve=None, seeds=(0, 1, 2), state=TrialState.COMPLETE):
    """A trained front trial as the objective stores it (its values: score, params)."""
    return create_trial(
        state=state,
        values=[val, float(params)] if state == TrialState.COMPLETE else None,
        params={"w": 4},
        distributions={"w": IntDistribution(4, 8)},
        user_attrs={"params": params, "feasible": True, "curve": curve or [], "seeds": list(seeds),
                    "recipe": {"replicas": 3}},
    )  # fmt: skip


def test_the_band_median_prunes_a_trial_against_nets_of_its_own_size_only():
    small = [_trial(i, 900, 0.97, curve=[0.90, 0.93 + i / 100]) for i in range(3)]  # medians 0.90, 0.94
    large = [_trial(3 + i, 7000, 0.99, curve=[0.97, 0.98]) for i in range(3)]
    judge = BandMedian(BANDS, warmup_epochs=1)
    others = small + large
    assert judge.median(others, 950, 2) == pytest.approx(0.94)
    assert judge.median(others, 7500, 1) == pytest.approx(0.97)
    assert judge.median(others, 1500, 1) is None  # nobody in 1,000-1,999 yet
    # A small net at 0.935 after epoch 2: below its band's median (0.94), pruned...
    assert judge.prune(others, 950, [0.89, 0.935])
    assert not judge.prune(others, 950, [0.89, 0.945])
    # ...while nets of 7,000 params (0.98) would prune everything small if they were compared.
    assert not judge.prune(others, 1500, [0.5, 0.6])  # its band has < 3 completed trials
    assert not BandMedian(BANDS, warmup_epochs=3).prune(others, 950, [0.1, 0.1])  # still warming up


def test_a_first_seed_contends_against_the_bar_of_its_own_band():
    others = [_trial(0, 900, 0.975), _trial(1, 7000, 0.994)]
    small = same_band(others, BANDS, 950)
    assert [t.user_attrs["params"] for t in small] == [900]
    assert contends(0.9745, small)  # within 0.1 points of the small band's 0.975
    assert not contends(0.9745, others)  # against every size, 7,000 params' 0.994 would rule it out
    assert not contends(0.973, small)
    assert contends(0.5, same_band(others, BANDS, 1500))  # first in its band: it sets the bar


def test_a_front_ranks_within_each_band_and_answers_each_budget_from_every_trial_under_it():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for n, (params, val, seeds) in enumerate([(900, 0.975, (0, 1, 2)), (950, 0.98, (0,)), (1500, 0.985, (0, 1, 2)),
                                              (1800, 0.97, (0, 1, 2)), (7000, 0.994, (0, 1, 2))]):  # fmt: skip
        study.add_trial(_trial(n, params, val, seeds=seeds))
    rows = leaderboard(study, BANDS)
    assert [(r.band, r.rank, r.trial) for r in rows] == [
        (1000, 1, 0), (1000, 2, 1),  # a mean of 3 seeds ahead of one seed's higher score
        (2000, 1, 2), (2000, 2, 3), (8000, 1, 4),
    ]  # fmt: skip
    assert [completed(leaderboard(study, under=b))[0].trial for b in BANDS.budgets] == [0, 2, 4]


def test_the_shipped_front_spans_both_families_and_starts_from_todays_verified_front():
    """experiments/front.yaml: its start points are results/budget-*/'s nets, each inside the space."""
    from mnist_search.core.config import load_experiment
    from mnist_search.core.model import count_params
    from mnist_search.search.space import sample_spec

    exp = load_experiment("front")
    assert exp.search.separable == (False, True)
    study = optuna.create_study(directions=["maximize", "minimize"])
    sizes = []
    for point in exp.search.start:
        study.enqueue_trial(params=dict(point))
        sizes.append(count_params(sample_spec(study.ask(), exp.search)))
    assert sizes == [979, 1916, 2469, 4277, 6441]
    assert [Bands((1000, 2000, 3000, 5000, 8000)).of(n) for n in sizes] == [1000, 2000, 3000, 5000, 8000]


def test_front_usage_errors_are_one_line_and_exit_2(store, data_dir):
    base = ["front", "--data-dir", str(data_dir), "--device", "cpu", "--quiet"]
    one_line_exit_2(
        runner.invoke(app, [*base, "--budgets", "1000,x"]), "--budgets 1000,x: give whole numbers"
    )
    one_line_exit_2(
        runner.invoke(app, [*base, "--max-params", "5000", "--budgets", "1000,6000"]),
        "is above --max-params 5,000",
    )
    one_line_exit_2(
        runner.invoke(app, [*base, "--budgets", "50"]),
        "--budgets 50: no architecture in front's search space fits",
    )
    assert not store.exists()  # nothing written before the checks passed


# Both families, small enough for seconds per trial; sizes from ~500 to ~9,000 parameters.
TINY_FRONT = """\
search:
  stages: [[{low: 4, high: 24}, {low: 4, high: 24}], [{low: 10, high: 24}]]
  transitions: [{low: 4, high: 24}]
  separable: [false, true]
recipe: {epochs: 2, optimizer: adam, lr: 0.01, batch_size: 64, replicas: 2}
pruner: {kind: median, warmup_epochs: 1}
"""


@pytest.mark.slow
def test_a_front_searches_two_objectives_trains_nothing_over_budget_and_verifies_each_budget(
    store, data_dir, tmp_path
):
    (tmp_path / "front.yaml").write_text(TINY_FRONT)
    args = ["front", "--experiment", "front.yaml", "--max-params", "4000", "--budgets", "2000", "--trials", "6",
            "--limit-train", "1000", "--data-dir", str(data_dir), "--device", "cpu", "--jobs", "1", "--quiet", "--verify"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = load_study(None, None)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == [OBJECTIVE_NAME, PARAMS_NAME]
    assert StudyRecord.of(study).budgets == [2000, 4000]
    trials = study.get_trials(deepcopy=False)
    over = [t for t in trials if t.user_attrs.get("feasible") is False]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert over, "the space proposes nets over 4,000 params"
    for t in over:  # rejected on the spec: never trained, never tracked
        assert (
            t.state == TrialState.PRUNED
            and t.user_attrs["params"] >= 4000
            and "mlflow_run_id" not in t.user_attrs
        )
    for t in done:  # two objectives: the score and the params, which the spec's count is
        assert 0.1 < t.values[0] <= 1.0 and t.values[1] == t.user_attrs["params"] < 4000
        assert len(t.user_attrs["curve"]) == 2  # its first seed's epochs, for the band median
    # A claim per budget, from the best trial under it, each exported and registered under its budget.
    client = local_client(store)
    for budget in (2000, 4000):
        rows = completed(leaderboard(study, under=budget))
        if not rows:
            assert f"< {budget:,}: no completed trial under this budget to verify" in result.stdout
            continue
        claims = [x for x in result.stdout.splitlines() if x.startswith(f"< {budget:,}: verified trial ")]
        assert claims, result.stdout
        line = claims[0]
        assert line.startswith(f"< {budget:,}: verified trial {rows[0].trial}: {rows[0].params:,} params")
        assert f"mnist-search-b{budget} version" in line and "(not @champion)" in line
        assert (store / "models" / "front-b4000" / f"budget-{budget // 1000}k" / "model.pt2").exists()
        assert client.get_registered_model(f"mnist-search-b{budget}").aliases.get("best") is not None
    # The front, written from those verify records: a row per budget.
    front = (store / "models" / "front-b4000" / "frontier.md").read_text()
    verified = [b for b in (2000, 4000) if completed(leaderboard(study, under=b))]
    assert [
        int(n.replace(",", "")) for n in re.findall(r"^\| < ([\d,]+) \|", front, re.MULTILINE)
    ] == verified
    # A smoke verify says so and claims no goal (< 2,000 has one: every seed >= 99.00 %).
    assert front.count("(Adam, 1,000 images, 2 epochs, 3 seeds (not the full protocol))") == len(verified)
    assert "| **yes** |" not in front and "| no |" not in front
    assert (store / "models" / "front-b4000" / "frontier.png").stat().st_size > 10_000
    # The parent holds each budget's best; the same study refuses to run as a one-budget study.
    (parent,) = [
        r for r in client.search_runs([client.get_experiment_by_name("mnist-search-studies").experiment_id])
        if r.data.tags.get("kind") == "study"
    ]  # fmt: skip
    assert parent.data.tags["budgets"] == "2000,4000"
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "front")}
    assert logged == {"front/frontier.md", "front/frontier.png"}
    best = completed(leaderboard(study, under=4000))[0]
    assert parent.data.metrics["best/b4000/trial"] == best.trial == parent.data.metrics["best/trial"]
    report = runner.invoke(app, ["report", "--study", "front-b4000", "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads(report.stdout)["trials"]
    assert rows and all(r["band"] == (2000 if r["params"] < 2000 else 4000) for r in rows)
    again = runner.invoke(app, ["study", "--experiment", "front.yaml", "--budget", "4000", "--study-name",
                                "front-b4000", "--data-dir", str(data_dir), "--device", "cpu"])  # fmt: skip
    one_line_exit_2(
        again, "study 'front-b4000' is a front (two objectives): run it with `mnist-search front`"
    )
