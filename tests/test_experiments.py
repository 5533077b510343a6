"""Experiment files state only what differs from the base they extend; loaded, each is the whole
experiment with defaults applied, exactly as before the files were cut down."""

from __future__ import annotations

import json

import pytest

from mnist_search.core.config import ConfigError, load_experiment, shipped_experiments

from .conftest import EXPERIMENTS, REPO

# Every shipped experiment as it loaded when each file still wrote out its whole recipe and pruner
# (model_dump of the loaded Experiment, taken before the files were cut down to their differences).
BEFORE = json.loads((REPO / "tests" / "fixtures" / "experiments_resolved.json").read_text())
# The one field renamed since (same value; the old name still loads): seeds per trial -> replicas.
RENAMED = {"recipe.seeds": "recipe.replicas"}
# Fields added since, at their defaults (a file that does not use them loads as before)...
ADDED = {"search.start": []}
# ...except where a shipped file sets one (its value has a test of its own below).
SET_SINCE = {("budget-8k", "search.start")}


def _fields(value, path=""):
    """Every leaf of a dumped experiment as (dotted path, value)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _fields(inner, f"{path}.{key}" if path else key)
    else:
        yield path, value


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_shipped_experiment_loads_to_exactly_the_experiment_it_loaded_to_before(name):
    now = json.loads(json.dumps(load_experiment(name).model_dump(mode="json")))
    before = {RENAMED.get(k, k): v for k, v in _fields(BEFORE[name])}
    after = dict(_fields(now))
    for key, default in ADDED.items():
        value = after.pop(key, default)
        assert (name, key) in SET_SINCE or value == default, key
    assert after.keys() == before.keys()
    differing = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert differing == {}


def test_the_budget_files_state_only_their_shape_and_share_one_recipe_and_pruner():
    budgets = sorted(EXPERIMENTS.glob("budget-*.yaml"))
    assert len(budgets) == 10
    for path in budgets:
        text = path.read_text()
        assert "extends: _search-base" in text
        assert "\nrecipe:" not in text and "\npruner:" not in text, path.name
    recipes = {load_experiment(p).recipe for p in budgets}
    assert len(recipes) == 1
    (recipe,) = recipes
    assert (recipe.epochs, recipe.replicas, recipe.precise_bn, recipe.cycle_epochs) == (15, 3, 10_000, 12)
    assert "_search-base" not in shipped_experiments()  # a base, not an experiment to run


def test_the_default_search_starts_from_the_best_plain_design_on_record():
    """budget-8k's start point is the 7,052-param net verified twice (every seed >= 99.40 %): it
    lies in the space, builds that exact net under the budget, with its recipe's rate and batch."""
    import optuna

    from mnist_search.core.model import count_params
    from mnist_search.search.space import sample_recipe, sample_spec

    exp = load_experiment("budget-8k")
    (point,) = exp.search.start
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params=dict(point))
    trial = study.ask()
    spec = sample_spec(trial, exp.search)
    recipe = sample_recipe(trial, exp.search, exp.recipe)
    assert spec.stages == ((8, 12, 8), (16, 14, 16)) and spec.transitions == (6,)
    assert count_params(spec) == 7052  # under the 8,000 budget
    assert (recipe.batch_size, round(recipe.lr, 4), round(spec.dropout, 4)) == (64, 0.1151, 0.0131)
    assert trial.params == point  # nothing sampled beside it


def test_a_users_file_extends_a_shipped_experiment_and_overrides_one_recipe_field(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: budget-8k\nrecipe: {epochs: 20}\nsearch: {dropout: {low: 0.0, high: 0.1}}\n")
    exp, base = load_experiment(path), load_experiment("budget-8k")
    assert exp.name == "mine"
    assert exp.recipe == base.recipe.model_copy(update={"epochs": 20})
    assert exp.search.dropout.high == 0.1
    assert exp.search.stages == base.search.stages  # merged key by key, not replaced
    assert exp.pruner == base.pruner


def test_a_base_beside_the_file_wins_over_a_shipped_one(tmp_path):
    (tmp_path / "_search-base.yaml").write_text("recipe: {epochs: 3}\n")
    (tmp_path / "mine.yaml").write_text("extends: _search-base\nspec: {stages: [[8, 16]]}\n")
    assert load_experiment(tmp_path / "mine.yaml").recipe.epochs == 3


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "extends: nosuch\nspec: {stages: [[8]]}\n"}, "extends: nosuch: no such file beside it"),
        ({"a.yaml": "extends: b\n", "b.yaml": "extends: a\n"}, "extends: a -> b -> a is a cycle"),
        ({"a.yaml": "extends: [b]\n"}, "extends: give the name of one experiment file"),
        (
            {"a.yaml": "extends: b\n", "b.yaml": "recipe: {epochs: 0}\nspec: {stages: [[8]]}\n"},
            "recipe.epochs",
        ),
    ],
)
def test_a_bad_extends_is_one_config_error(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match="^" + str(tmp_path / "a.yaml")) as info:
        load_experiment(tmp_path / "a.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_recipes_recorded_with_the_old_seeds_name_still_load_as_replicas():
    """Trials record their recipe in the study; the committed journals' say `seeds` (the name
    before `replicas`). `verify` rebuilds recipes from them, so they must load unchanged."""
    import optuna

    from mnist_search.core.config import Recipe
    from mnist_search.search.records import TrialRecord
    from mnist_search.search.storage import open_storage

    journal = REPO / "results" / "studies" / "cpu-search-8k-separable.journal"
    study = optuna.load_study(study_name="budget-8k-separable-b8000", storage=open_storage(str(journal)))
    recorded = TrialRecord.of(study.trials[30]).recipe
    assert recorded["seeds"] == 3 and "replicas" not in recorded
    recipe = Recipe.model_validate(recorded)
    assert (recipe.replicas, recipe.batch_size, round(recipe.lr, 4)) == (3, 64, 0.1507)
    assert Recipe.model_validate(recipe.model_dump()) == recipe  # and round-trips under the new name
