"""Per-replica training throughput of packed replicas: K seeds of one spec as one grouped network.

For each K, trains K replicas of the verified 7,520-param net (batch 64, its recipe: rotation,
dropout, SGD + OneCycle) on real MNIST with mnist-search's own training loop (`train_epoch`:
gather, augment, forward, backward, step) for a fixed number of steps, after a warm-up, and prints
ms per step, ms per replica-step and the per-replica speed-up against eager K = 1 measured in the
same process; then the same in the "separate" layout (K small networks side by side, packed.py:
what `pick_layout` chooses where grouped convolutions are slow), and with `torch.compile` (the
grouped network's training steps as one compiled graph, its dropout drawn outside it:
mnist_search/speed/compiled.py), its warm-up time separately.
The last line: `per-replica speed-up at K=3: 1.62x eager, 1.95x compiled`.

    python benchmarks/replica_speed.py [--ks 1,2,3,4,8] [--steps 100] [--repeats 3] [--threads N]
        [--device cpu|cuda] [--no-compile] [--precision fp32|bf16] [--data-dir ../shared/datasets/mnist]

Run it alone: on 2 cores anything beside it moves the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mnist_search.core.config import load_experiment
from mnist_search.core.data import load_mnist
from mnist_search.core.model import build_model, count_params
from mnist_search.speed.compiled import CompiledForward
from mnist_search.speed.packed import pack
from mnist_search.training.train import batch_bounds, make_optimizer, make_scheduler, train_epoch
from mnist_search.workflows.runtime import available_cores, configure_threads

DEFAULT = Path(__file__).resolve().parent.parent / "results" / "budget-8k" / "experiment.yaml"


class Pack:
    """K replicas ready to train: timed in rounds, so that noise hits every K alike."""

    def __init__(self, exp, data, k: int, compiled: bool, device, layout: str = "grouped"):
        self.recipe = exp.recipe
        self.data, self.k, self.device = data, k, device
        self.net = pack([build_model(exp.spec, seed=s) for s in range(k)], layout).to(
            device, memory_format=torch.channels_last
        )
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in range(k)]
        self.net.set_dropout_generators([torch.Generator(device=device).manual_seed(s) for s in range(k)])
        self.optimizer = make_optimizer(self.net, self.recipe)
        n = len(data.train)
        steps = len(batch_bounds(n, self.recipe.batch_size))
        self.scheduler = make_scheduler(self.optimizer, self.recipe, steps, self.recipe.epochs)
        self.forward = CompiledForward(self.net) if compiled else self.net

    def seconds(self, steps: int) -> float:
        """Wall seconds of `steps` training steps (gather, augment, forward, backward, step)."""
        b, n = self.recipe.batch_size, len(self.data.train)
        orders = torch.stack(
            [torch.randperm(n, generator=g, device=self.device)[: steps * b] for g in self.gens]
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_epoch(
            self.net, self.data, self.recipe, orders, self.optimizer, self.scheduler, self.gens, self.forward
        )  # fmt: skip  (it syncs at its end: the losses come back as numbers)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=str(DEFAULT))
    ap.add_argument("--ks", default="1,2,3,4,8")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--precision", default=None, help="fp32 or bf16 (default: the experiment's recipe)")
    a = ap.parse_args()
    device = torch.device(a.device)
    threads = a.threads or available_cores()
    if device.type == "cpu":
        configure_threads(threads)
    exp = load_experiment(a.experiment)
    if a.precision is not None:
        recipe = type(exp.recipe).model_validate({**exp.recipe.model_dump(), "precision": a.precision})
        exp = exp.model_copy(update={"recipe": recipe})
    data = load_mnist(a.data_dir, val_size=0, limit_train=None).to(device)
    ks = [int(k) for k in a.ks.split(",")]
    where = f"{torch.cuda.get_device_name()}" if device.type == "cuda" else f"{threads} CPU threads"
    print(f"{count_params(exp.spec):,}-param net, batch {exp.recipe.batch_size}, best of {a.repeats} x {a.steps} steps, {where}, {exp.recipe.precision}, "
          f"torch {torch.__version__}")  # fmt: skip
    speedup: dict[str, dict[int, float]] = {}
    base = None  # eager K = 1, ms per replica-step: the baseline of every ratio
    for mode in ["eager", "separate"] + ([] if a.no_compile else ["compiled"]):
        layout = "separate" if mode == "separate" else "grouped"
        packs = {k: Pack(exp, data, k, mode == "compiled", device, layout) for k in ks}
        warm = {k: p.seconds(10 if mode == "compiled" else 5) for k, p in packs.items()}  # compiles
        best = {k: float("inf") for k in ks}
        for _ in range(a.repeats):  # rounds over every K: a slow moment slows one round, not one K
            for k, p in packs.items():
                best[k] = min(best[k], p.seconds(a.steps) / a.steps)
        print(f"{mode}:\n   K   ms/step  ms/replica-step  per-replica vs eager K=1   warm-up s")
        speedup[mode] = {}
        for k in ks:
            per_replica = best[k] / k
            base = base if base is not None else per_replica
            speedup[mode][k] = base / per_replica
            print(f"{k:>4} {best[k] * 1e3:>9.2f} {per_replica * 1e3:>16.2f} {speedup[mode][k]:>25.2f}x {warm[k]:>11.1f}",
                  flush=True)  # fmt: skip
    k3 = 3 if 3 in ks else ks[-1]
    print(
        f"separate layout (K small nets, packed.py), per-replica speed-up at K={k3}: {speedup['separate'][k3]:.2f}x"
    )
    line = f"per-replica speed-up at K={k3}: {speedup['eager'][k3]:.2f}x eager"
    if "compiled" in speedup:
        line += f", {speedup['compiled'][k3]:.2f}x compiled"
    print(line)


if __name__ == "__main__":
    main()
