"""Training throughput on this machine: one process with every core against N processes side by
side with cores/N threads each (what `study --jobs N` and `verify --jobs N` do).

Each process trains the same spec (`--seeds K`: a pack of K seeds) for the same number of epochs
on the same images with `fit_replicas`;
prints seconds per epoch for each configuration and the ratio of total throughput (images per
second, all processes together) of (b) to (a).

    python benchmarks/parallel_speed.py [--experiment results/budget-8k/experiment.yaml]
        [--jobs 2] [--epochs 1] [--seeds 1] [--limit-train 60000] [--data-dir ../shared/datasets/mnist]
"""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path

import torch

from mnist_search.core.config import load_experiment
from mnist_search.core.data import load_mnist
from mnist_search.core.model import build_model, count_params
from mnist_search.speed.packed import pack
from mnist_search.training.train import fit_replicas
from mnist_search.workflows.runtime import available_cores, configure_threads

DEFAULT = Path(__file__).resolve().parent.parent / "results" / "budget-8k" / "experiment.yaml"


def train(args: tuple[str, str | None, int, int, int, int, int]) -> float:
    """Seconds per epoch of one process training a pack of `seeds` replicas (data loading excluded)."""
    experiment, data_dir, limit, epochs, threads, seed, seeds = args
    configure_threads(threads)
    exp = load_experiment(experiment)
    recipe = exp.recipe.model_copy(update={"val_size": 0, "epochs": epochs})
    data = load_mnist(data_dir, val_size=0, limit_train=limit)
    first = seed * seeds
    net = pack([build_model(exp.spec, seed=first + k) for k in range(seeds)])
    (result, *_) = fit_replicas(
        net, data, recipe, torch.device("cpu"), seeds=list(range(first, first + seeds))
    )
    return sum(e.epoch_seconds for e in result.epochs) / len(result.epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default=str(DEFAULT))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="replicas packed in each process")
    ap.add_argument("--limit-train", type=int, default=60_000)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    cores = available_cores()
    exp = load_experiment(a.experiment)
    print(f"{a.experiment}: {count_params(exp.spec):,} params, batch {exp.recipe.batch_size}, "
          f"{a.limit_train:,} images, {a.epochs} epoch(s), {a.seeds} seed(s) packed per process, {cores} cores")  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # (a): one process, every core
        alone = pool.map(train, [(a.experiment, a.data_dir, a.limit_train, a.epochs, cores, 0, a.seeds)])[0]
    threads = max(1, cores // a.jobs)
    with ctx.Pool(a.jobs) as pool:  # (b): side by side
        side = pool.map(
            train,
            [(a.experiment, a.data_dir, a.limit_train, a.epochs, threads, s, a.seeds) for s in range(a.jobs)],
        )
    print(f"(a) 1 process x {cores} threads: {alone:.1f} s per epoch")
    print(
        f"(b) {a.jobs} processes x {threads} threads: " + ", ".join(f"{s:.1f}" for s in side) + " s per epoch"
    )
    ratio = (a.jobs / max(side)) / (1 / alone)
    print(f"throughput (b)/(a): {ratio:.2f}x")


if __name__ == "__main__":
    main()
