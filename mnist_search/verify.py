"""Verification: retrain a study's top architectures on all 60,000 training images over several
seeds and report the test accuracy per seed (final and min of the last 3 epochs), mean ± std,
and whether the 99.4 % target held in every seed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .config import ArchSpec, Recipe
from .tracking import TARGET
from .train import FitResult


@dataclass
class SeedRun:
    seed: int
    run_id: str
    result: FitResult

    @property
    def final(self) -> float:
        return self.result.epochs[-1].test_acc

    @property
    def min_last3(self) -> float:
        return self.result.test_min_last3


@dataclass
class Verified:
    trial: int
    spec: ArchSpec
    recipe: Recipe
    params: int
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(r.final for r in self.runs)

    @property
    def std(self) -> float:
        return statistics.stdev(r.final for r in self.runs) if len(self.runs) > 1 else 0.0

    @property
    def held(self) -> bool:
        """Target held in every seed: test acc >= 99.4 % in each of the last 3 epochs."""
        return bool(self.runs) and all(r.result.target_met(TARGET) for r in self.runs)


def verify_table(rows: list[Verified], epochs: int) -> str:
    """Markdown: one line per architecture and seed, then mean ± std and the verdict."""
    out = [
        f"| trial | params | seed | test acc, epoch {epochs} | test acc, min of last 3 | target held |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for v in rows:
        for r in v.runs:
            out.append(
                f"| {v.trial} | {v.params:,} | {r.seed} | {r.final:.4f} | {r.min_last3:.4f} | "
                f"{'yes' if r.result.target_met(TARGET) else 'no'} |"
            )
        out.append(
            f"| **{v.trial}** | **{v.params:,}** | mean ± std | **{v.mean:.4f} ± {v.std:.4f}** | "
            f"{min(r.min_last3 for r in v.runs):.4f} (worst) | **{'yes, every seed' if v.held else 'no'}** |"
        )
    return "\n".join(out)
