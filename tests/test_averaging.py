"""Weight averaging (recipe.ema): the measured and handed-out weights are the warmed-up moving
average of the trained ones, and packing keeps each replica its own training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from mnist_search.core.config import ConfigError, Recipe, load_experiment
from mnist_search.core.model import build_model
from mnist_search.training.averaging import warmed_decay
from mnist_search.training.train import fit

from .test_packed import SPEC, assert_each_replica_is_its_run_alone, small


def fit_recording_steps(spec, data, recipe: Recipe, seed: int):
    """`spec` trained without averaging (float64): the model, its FitResult and its weights after
    every optimiser step (a list of parameter tensors per step)."""
    steps: list[list[torch.Tensor]] = []

    def snapshot(optimizer, args, kwargs) -> None:
        steps.append([p.detach().clone() for g in optimizer.param_groups for p in g["params"]])

    model = build_model(spec, seed=seed).double()
    hook = register_optimizer_step_post_hook(snapshot)
    try:
        result = fit(model, data, recipe, torch.device("cpu"), seed=seed)
    finally:
        hook.remove()
    return model, result, steps


def test_the_decay_warms_up_then_holds():
    assert [warmed_decay(0.999, t) for t in (0, 1, 8)] == [0.1, 2 / 11, 0.5]
    assert warmed_decay(0.999, 9_000) == 0.999 and warmed_decay(0.5, 100) == 0.5


@pytest.mark.parametrize("decay", [0.999, 0.8])
def test_the_measured_weights_are_the_moving_average_of_the_trained_ones(mnist, decay):
    """Every weight after each step of a run without averaging, averaged by hand, is what the
    same run with `ema` measures and hands out (float64; real images: above chance after one
    epoch of 63 steps, which the warm-up makes possible at decay 0.999; at 0.8 the warm-up ends
    after 35 steps, so the fixed decay is checked too)."""
    data = small(mnist, 4_000, dtype=torch.float64)
    spec = SPEC.model_copy(update={"dropout": 0.0})
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, schedule="onecycle", precise_bn=1_000)
    plain, _, steps = fit_recording_steps(spec, data, recipe, seed=3)
    assert len(steps) == 63
    by_hand = [w.clone() for w in steps[0]]
    for t, weights in enumerate(steps[1:]):
        d = warmed_decay(decay, t)
        by_hand = [d * a + (1 - d) * w for a, w in zip(by_hand, weights)]

    averaged = build_model(spec, seed=3).double()
    result = fit(averaged, data, recipe.model_copy(update={"ema": decay}), torch.device("cpu"), seed=3)
    for mine, theirs in zip(averaged.parameters(), by_hand):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=1e-9)
    # not the last weights, and measured with BatchNorm statistics of its own
    assert max((a - b).abs().max().item() for a, b in zip(averaged.parameters(), plain.parameters())) > 1e-3
    bn = next(m for m in averaged.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_plain = next(m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_mean, bn_plain.running_mean)
    assert result.epochs[0].test_acc > 0.5, result.epochs[0]  # chance is 0.1


def test_with_averaging_replica_k_of_a_packed_run_matches_a_run_alone(mnist):
    """As test_packed's equivalence test, with `ema` and dropout: each replica's average and its
    BatchNorm re-estimation (dropout from its own generator) are exactly its run alone."""
    data = small(mnist, 448, dtype=torch.float64)
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, precise_bn=256, lr=0.05, ema=0.99)
    assert_each_replica_is_its_run_alone(data, recipe)


def test_averaging_without_batchnorm_re_estimation_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="ema needs precise_bn > 0"):
        Recipe(ema=0.999)
    path = tmp_path / "exp.yaml"
    spec = {"stages": [[4, 8]], "transitions": []}
    path.write_text(yaml.safe_dump({"spec": spec, "recipe": {"ema": 0.999}}))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert "ema needs precise_bn > 0" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # ~14 s: trains several epochs
def test_swa_measures_and_hands_out_the_plain_mean_of_the_steps_from_its_epoch_on(mnist):
    """`swa_from=2`: epoch 1 is measured on the weights as trained, epoch 2 on the mean of the
    weights after each of epoch 2's 63 steps, averaged by hand from a run without averaging
    (float64; the same trajectory, since averaging never feeds back into training)."""
    data = small(mnist, 4_000, dtype=torch.float64)
    spec = SPEC.model_copy(update={"dropout": 0.0})
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, schedule="onecycle", precise_bn=1_000)
    plain, as_trained, steps = fit_recording_steps(spec, data, recipe, seed=5)
    assert len(steps) == 126
    by_hand = [torch.stack(ws).mean(0) for ws in zip(*steps[63:])]

    averaged = build_model(spec, seed=5).double()
    result = fit(averaged, data, recipe.model_copy(update={"swa_from": 2}), torch.device("cpu"), seed=5)
    for mine, theirs in zip(averaged.parameters(), by_hand, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=1e-9)
    assert max((a - b).abs().max().item() for a, b in zip(averaged.parameters(), plain.parameters())) > 1e-3
    first, first_trained = (dataclasses.replace(r.epochs[0], epoch_seconds=0.0) for r in (result, as_trained))
    assert first == first_trained  # before its epoch: the weights as trained (all but the time)
    assert result.epochs[1].test_acc != as_trained.epochs[1].test_acc
    assert result.epochs[1].test_acc > 0.5, result.epochs[1]  # chance is 0.1


def test_with_swa_replica_k_of_a_packed_run_matches_a_run_alone(mnist):
    data = small(mnist, 448, dtype=torch.float64)
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, precise_bn=256, lr=0.05, swa_from=2)
    assert_each_replica_is_its_run_alone(data, recipe)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"swa_from": 3}, "swa_from needs precise_bn > 0"),
        ({"swa_from": 3, "ema": 0.99, "precise_bn": 100}, "ema and swa_from: choose one weight average"),
        ({"swa_from": 16, "precise_bn": 100}, r"swa_from \(16\) is after the last epoch \(15\)"),
    ],
)
def test_a_wrong_swa_setting_is_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message):
        Recipe(epochs=15, **fields)
