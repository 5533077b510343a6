"""The trainer on real MNIST: it learns, it is reproducible, it reports through its callback."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_search.config import ArchSpec, Recipe
from mnist_search.data import MNISTData, Split
from mnist_search.model import build_model
from mnist_search.train import NonFiniteLoss, augment, fit, resolve_device

SPEC = ArchSpec(stages=[[8, 12], [12, 16]], transitions=[8], batchnorm=True, dropout=0.05, head="gap")


def small(mnist, n_train=4_000, n_eval=2_000) -> MNISTData:
    return MNISTData(
        train=Split(mnist.train.x[:n_train], mnist.train.y[:n_train]),
        val=Split(mnist.val.x[:n_eval], mnist.val.y[:n_eval]),
        test=Split(mnist.test.x[:n_eval], mnist.test.y[:n_eval]),
    )


def test_one_epoch_on_real_images_beats_chance_by_far(mnist):
    seen = []
    recipe = Recipe(optimizer="adam", lr=0.01, batch_size=32)
    result = fit(build_model(SPEC, seed=0), small(mnist), recipe, torch.device("cpu"), seen.append, epochs=1)
    assert [r.epoch for r in seen] == [1] and seen[0] is result.epochs[0]
    # Chance is 0.10; one epoch on 4,000 real images (125 steps) reaches about 0.84.
    assert result.epochs[0].val_acc > 0.75
    assert result.epochs[0].test_acc > 0.75
    assert result.epochs[0].train_loss < 1.5


def test_training_is_reproducible_on_cpu(mnist):
    data = small(mnist, 1_000, 500)
    runs = [
        fit(build_model(SPEC, seed=3), data, Recipe(rotation=8), torch.device("cpu"), epochs=1, seed=3)
        for _ in range(2)
    ]
    assert runs[0].epochs[0].train_loss == runs[1].epochs[0].train_loss
    assert runs[0].epochs[0].val_acc == runs[1].epochs[0].val_acc


def test_absurd_learning_rate_raises_non_finite_loss(mnist):
    data = small(mnist, 1_000, 200)
    spec = ArchSpec(stages=[[8]], batchnorm=False, head="gap")
    with pytest.raises(NonFiniteLoss, match="became (nan|inf)"):
        fit(build_model(spec), data, Recipe(lr=1e12, momentum=0.9), torch.device("cpu"), epochs=1)


def test_augmentation_is_identity_when_off_and_moves_pixels_when_on(mnist):
    x = mnist.train.x[:64]
    assert torch.equal(augment(x, Recipe(), None), x)
    moved = augment(x, Recipe(rotation=10, translate=0.1), torch.Generator().manual_seed(0))
    assert moved.shape == x.shape
    assert (moved - x).abs().mean() > 0.05
    assert math.isclose(moved.min().item(), x.min().item(), abs_tol=1e-4)  # border = background


def test_unknown_or_missing_devices_are_rejected():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
