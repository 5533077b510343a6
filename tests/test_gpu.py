"""The CUDA path, where a GPU is present (skipped elsewhere; the project never depends on one):
training on the device, `--device auto` choosing it, a study and a verify with workers on it."""

from __future__ import annotations

import pytest
import torch

from mnist_search.cli import app
from mnist_search.core.config import ArchSpec, Recipe
from mnist_search.core.data import MNISTData, Split, load_mnist
from mnist_search.core.model import build_model
from mnist_search.training.train import evaluate, fit

from .conftest import EXPERIMENTS, local_client, runner, runs_of

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")]
CUDA = torch.device("cuda")
SPEC = ArchSpec(stages=[[8, 12], [12, 16]], transitions=[8], batchnorm=True, dropout=0.05, head="gap")


def test_one_epoch_on_the_gpu_learns_and_keeps_everything_on_the_device(data_dir):
    data = load_mnist(data_dir).to(CUDA)
    assert data.train.x.device.type == "cuda" and data.test.y.device.type == "cuda"
    small = MNISTData(Split(data.train.x[:10_000], data.train.y[:10_000]), data.val, data.test)
    model = build_model(SPEC, seed=0)
    recipe = Recipe(optimizer="adam", lr=0.01, batch_size=64, epochs=1, rotation=5, precise_bn=2_000)
    result = fit(model, small, recipe, CUDA, seed=0)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert result.epochs[0].val_acc > 0.9 and result.epochs[0].test_acc > 0.9  # chance is 0.1
    # The same weights measured on the CPU agree with the GPU's figure.
    cpu = load_mnist(data_dir)
    _, acc = evaluate(model.to("cpu"), cpu.test)
    assert acc == pytest.approx(result.epochs[0].test_acc, abs=2e-3)


def test_train_with_device_auto_runs_on_cuda(store, data_dir):
    args = ["train", str(EXPERIMENTS / "seed-model-3.yaml"), "--epochs", "1", "--limit-train", "5000",
            "--data-dir", str(data_dir)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "s/epoch on cuda" in result.output


def test_a_study_and_a_verify_with_two_workers_on_the_gpu(store, data_dir):
    study = ["study", "--budget", "8000", "--trials", "3", "--epochs", "2", "--limit-train", "5000",
             "--data-dir", str(data_dir), "--device", "cuda", "--quiet"]  # fmt: skip
    result = runner.invoke(app, study)
    assert result.exit_code == 0, result.output
    assert "3/3 trials done" in result.output
    children = runs_of(local_client(store), "mnist-search-studies", "trial")
    assert len(children) == 3 and all(c.info.status in ("FINISHED", "KILLED") for c in children)
    verify = ["verify", "--top", "1", "--seeds", "2", "--epochs", "2", "--limit-train", "5000",
              "--data-dir", str(data_dir), "--device", "cuda", "--jobs", "2"]  # fmt: skip
    result = runner.invoke(app, verify)
    assert result.exit_code == 0, result.output
    runs = runs_of(local_client(store), "mnist-search-verify", "verify-run")
    assert len(runs) == 2 and all(
        r.info.status == "FINISHED" and r.data.metrics["test/acc"] > 0.9 for r in runs
    )
