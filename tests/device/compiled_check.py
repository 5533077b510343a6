"""A compiled pack against the eager one on a device (compiled.py): 14 training steps in float64
with rotation and dropout, K = 3 and K = 1; prints the largest weight difference per run.

    python3 tests/device/compiled_check.py --device cuda     # run by tests/device/packed.sh

(On the CPU the same comparison is tests/test_compiled.py.)"""

from __future__ import annotations

import argparse

import torch
import torch._dynamo

from mnist_search.core.config import ArchSpec, Recipe
from mnist_search.core.data import MNISTData, Split, load_mnist
from mnist_search.core.model import build_model
from mnist_search.speed.compiled import CompiledForward
from mnist_search.speed.packed import pack
from mnist_search.training.train import batch_bounds, make_optimizer, make_scheduler, train_epoch

SPEC = ArchSpec(stages=[[6, 8], [8, 10]], transitions=[6], batchnorm=True, dropout=0.1, head="conv")


def trained(spec: ArchSpec, data: MNISTData, seeds, device: torch.device, compiled: bool):
    """Two epochs of `train_epoch` (float64, rotation, dropout, OneCycle) as `fit_replicas` runs
    them, compiled or not: the pack and each epoch's per-replica (losses, accuracies).
    tests/test_compiled.py runs the same on the CPU."""
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, lr=0.05)
    net = pack([build_model(spec, seed=s).double() for s in seeds]).to(
        device, memory_format=torch.channels_last
    )
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    net.set_dropout_generators([torch.Generator(device=device).manual_seed(s) for s in seeds])
    optimizer = make_optimizer(net, recipe)
    n = len(data.train)
    scheduler = make_scheduler(optimizer, recipe, len(batch_bounds(n, recipe.batch_size)), recipe.epochs)
    forward = CompiledForward(net) if compiled else None
    epochs = []
    for _ in range(recipe.epochs):
        orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])
        epochs.append(train_epoch(net, data, recipe, orders, optimizer, scheduler, gens, forward))
    return net, epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    device = torch.device(ap.parse_args().device)
    d = load_mnist(None, val_size=1000, limit_train=5000)

    def split(s: Split, n: int) -> Split:
        return Split(s.x[:n].double(), s.y[:n])

    data = MNISTData(split(d.train, 416), split(d.val, 100), split(d.test, 100)).to(device)
    for seeds in ([4, 11, 7], [4]):
        torch._dynamo.reset()
        eager_net, eager = trained(SPEC, data, seeds, device, compiled=False)
        compiled_net, compiled = trained(SPEC, data, seeds, device, compiled=True)
        diff = max(
            (compiled_net.state_dict()[k].double() - v.double()).abs().max().item()
            for k, v in eager_net.state_dict().items()
        )
        print(f"COMPILED-CHECK {device} K={len(seeds)}: max weight diff {diff:.1e}; last losses "
              f"compiled {[round(x, 6) for x in compiled[-1][0]]} eager {[round(x, 6) for x in eager[-1][0]]}")  # fmt: skip


if __name__ == "__main__":
    main()
