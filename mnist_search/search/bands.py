"""Size bands of a front: the budgets a two-objective study is judged by.

`mnist-search front --budgets 1000,2000,3000,5000,8000` searches one space for the best net at
every size. Its trials are compared within their band, so a small net is compared with small nets:
a 900-parameter net scoring 0.985 is a fine result under 1,000 and a poor one under 8,000. A
trial's band is the smallest budget its parameter count is under (`Bands.of`); the largest budget
is the study's constraint, checked on the spec before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_search.core.errors import BudgetError


@dataclass(frozen=True)
class Bands:
    """Ascending parameter budgets; band B holds the specs with lower(B) <= params < B."""

    budgets: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.budgets:
            raise BudgetError("a front needs at least one budget")
        if any(b <= 0 for b in self.budgets) or list(self.budgets) != sorted(set(self.budgets)):
            raise BudgetError(f"budgets {self.text}: give distinct positive numbers in ascending order")

    @classmethod
    def parse(cls, text: str, largest: int | None = None) -> Bands:
        """`"1000,2000,8000"` (and `largest`, a --max-params, added when missing); BudgetError
        (a usage error) with a one-line reason on anything else."""
        try:
            budgets = {int(part.strip().replace("_", "")) for part in text.split(",") if part.strip()}
        except ValueError:
            raise BudgetError(f"--budgets {text}: give whole numbers separated by commas") from None
        if largest is not None:
            if budgets and max(budgets) > largest:
                raise BudgetError(f"--budgets {text}: {max(budgets):,} is above --max-params {largest:,}")
            budgets.add(largest)
        if not budgets:
            raise BudgetError(f"--budgets {text!r}: give at least one number")
        return cls(tuple(sorted(budgets)))

    @property
    def largest(self) -> int:
        return self.budgets[-1]

    @property
    def text(self) -> str:
        return ",".join(str(b) for b in self.budgets)

    def of(self, params: int | None) -> int | None:
        """The band of a spec with `params` parameters: the smallest budget above it (None when it
        is over every budget, or unknown)."""
        if params is None:
            return None
        return next((b for b in self.budgets if params < b), None)

    def lower(self, budget: int) -> int:
        """Where band `budget` starts: the budget below it (0 for the smallest)."""
        below = [b for b in self.budgets if b < budget]
        return below[-1] if below else 0

    def label(self, budget: int) -> str:
        """ "< 1,000" for the smallest band, "1,000-1,999" above it."""
        low = self.lower(budget)
        return f"< {budget:,}" if low == 0 else f"{low:,}-{budget - 1:,}"
