"""How far a missed goal is: the chance that a net holds its budget's goal on 3 seeds, by its true mean.

Reads every committed `results/budget-*/verify.json` of one budget, measures the seed-to-seed spread
within a net (the standard deviation of each seed's minimum over epochs 13-15 about that net's own
mean, pooled over the nets) and the mean gap between a seed's epoch-15 accuracy and that minimum,
then draws 3 seeds many times for a net of each true epoch-15 mean: a seed's minimum is normal with
the pooled spread, its epoch-15 figure that minimum plus the gap. Printed: the probability that
the draw holds the goal (every seed's minimum at or above the floor, and for < 8,000 an epoch-15
mean of at least 99.50 %). A model, not a measurement: the spread is pooled over different nets
and recipes, and the gap taken as fixed.

    python results/goal_odds.py --budget 8000
    python results/goal_odds.py --budget 1000
"""

import argparse
import json
import random
import statistics
from pathlib import Path

from mnist_search.workflows.frontier import GOALS  # the goals frontier.md applies


def verified(results: Path, budget: int) -> list[tuple[str, int, list[float], list[float]]]:
    """(folder, trial, each seed's minimum of epochs 13-15, each seed's epoch 15) per verified net."""
    nets = []
    for path in sorted(results.glob("budget-*/verify.json")):
        found = json.loads(path.read_text())
        if found["budget"] != budget:
            continue
        for c in found["candidates"]:
            nets.append((path.parent.name, c["trial"], [s["min_last3"] for s in c["seeds"]],
                         [s["test_acc"][-1] for s in c["seeds"]]))  # fmt: skip
    return nets


def spread_and_gap(nets) -> tuple[float, float]:
    """Pooled within-net standard deviation of the seeds' minima, and mean (epoch 15 - minimum)."""
    squares = sum((m - statistics.mean(mins)) ** 2 for _, _, mins, _ in nets for m in mins)
    freedom = sum(len(mins) - 1 for _, _, mins, _ in nets)
    gap = statistics.mean(f - m for _, _, mins, finals in nets for m, f in zip(mins, finals))
    return (squares / freedom) ** 0.5, gap


def odds(
    mean: float, spread: float, gap: float, floor: float, mean_goal: float | None, draws: int, rng
) -> float:
    held = 0
    for _ in range(draws):
        mins = [rng.gauss(mean - gap, spread) for _ in range(3)]
        finals_mean = statistics.mean(mins) + gap
        held += min(mins) >= floor - 1e-9 and (mean_goal is None or finals_mean >= mean_goal - 1e-9)
    return held / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, choices=sorted(GOALS), default=8000)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent)
    parser.add_argument("--draws", type=int, default=20000)
    args = parser.parse_args()
    floor, mean_goal = GOALS[args.budget]
    nets = verified(args.results, args.budget)
    if len(nets) < 2:
        raise SystemExit(f"error: fewer than 2 verified nets under {args.budget:,} in {args.results}")
    for folder, trial, mins, finals in nets:
        shown = " / ".join(f"{100 * m:.2f}" for m in mins)
        print(
            f"{folder:34s} trial {trial:<3d} min of 13-15: {shown} %  epoch-15 mean {100 * statistics.mean(finals):.2f} %"
        )
    spread, gap = spread_and_gap(nets)
    print(
        f"{len(nets)} nets: seed spread (pooled std) {100 * spread:.3f} points; epoch 15 - minimum {100 * gap:.3f} points"
    )
    goal = f"every seed >= {100 * floor:.2f} %" + (f", mean >= {100 * mean_goal:.2f} %" if mean_goal else "")
    print(f"P(goal: {goal}) by the net's true epoch-15 mean:")
    rng = random.Random(0)
    best = max(statistics.mean(finals) for _, _, _, finals in nets)
    start = round(best * 10000) - 4
    for step in range(21):
        mean = (start + step) / 10000
        print(f"  {100 * mean:.2f} %  {odds(mean, spread, gap, floor, mean_goal, args.draws, rng):.2f}")


if __name__ == "__main__":
    main()
