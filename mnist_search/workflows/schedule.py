"""How `verify` splits its trials' seeds into packs for N worker processes: pure, no torch.

Each trial trains its seeds as packed replicas (packed.py). A pack of K seeds costs less than K
runs alone but more than one, and a worker trains one pack at a time, so the split decides the
wall time: `verify --top 3 --seeds 3` on 2 workers as three packs of 3 leaves one core idle for
the last third; splitting one trial's seeds 2 + 1 keeps both busy (≈ 16 % less wall time by the
costs below). `plan_packs` tries the splits and keeps the one that finishes first.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

# Per-replica speed of a pack of K seeds against one seed alone, on the CPU with one torch thread
# per worker (benchmarks/replica_speed.py --threads 1, 2026-11-28, 2 cores: 1.32 / 1.35 / 1.40x at
# K = 2 / 3 / 4; flat beyond). A pack of K then takes K / speed-up the time of one seed.
REPLICA_SPEEDUP = {1: 1.0, 2: 1.32, 3: 1.35, 4: 1.40}

# Splits tried at most (every trial's pack count in 1 .. min(seeds, workers)); above this the
# simple rule: as many packs per trial as it takes to give every worker one.
MAX_SPLITS = 4_096


def pack_cost(size: int) -> float:
    """Time of one pack of `size` seeds, in units of one seed trained alone."""
    return size / REPLICA_SPEEDUP.get(size, REPLICA_SPEEDUP[max(REPLICA_SPEEDUP)])


def seed_packs(seeds: int, packs: int) -> list[tuple[int, ...]]:
    """Seeds 0 .. seeds-1 in `packs` packs of near-equal size: (0, 1, 2) | (0, 1), (2,)."""
    size = -(-seeds // packs)
    return [tuple(range(start, min(start + size, seeds))) for start in range(0, seeds, size)]


def makespan(costs: Sequence[float], workers: int) -> float:
    """Wall time of packs handed out in this order, each to the first worker that is free (what
    a process pool does with one task at a time)."""
    loads = [0.0] * workers
    for cost in costs:
        i = loads.index(min(loads))
        loads[i] += cost
    return max(loads)


def plan_packs(weights: Sequence[float], seeds: int, workers: int) -> list[tuple[int, tuple[int, ...]]]:
    """The packs to train, as (trial index, seeds), in the order to hand them out.

    `weights`: each trial's time per seed (any unit: verify passes multiply-adds per image).
    One worker: one pack per trial, in trial order (fewest packs cost least in all). Several: of
    every way to split each trial's seeds into 1 .. min(seeds, workers) near-equal packs, the one
    whose packs, longest first, finish soonest; among equals, the fewest packs."""
    if workers <= 1 or not weights:
        return [(i, tuple(range(seeds))) for i in range(len(weights))]
    choices = range(1, min(seeds, workers) + 1)
    if len(choices) ** len(weights) > MAX_SPLITS:
        fallback = max(1, min(seeds, -(-workers // len(weights))))
        splits = [(fallback,) * len(weights)]
    else:
        splits = itertools.product(choices, repeat=len(weights))
    best: tuple[tuple[float, int], list] | None = None
    for counts in splits:
        packs = [
            (weights[i] * pack_cost(len(pack)), i, pack)
            for i, count in enumerate(counts)
            for pack in seed_packs(seeds, count)
        ]
        packs.sort(key=lambda p: -p[0])  # longest first; stable, so trial order among equals
        key = (round(makespan([p[0] for p in packs], workers), 9), len(packs))
        if best is None or key < best[0]:
            best = (key, packs)
    return [(i, pack) for _, i, pack in best[1]]
