"""The verified Pareto front: every committed result, per budget, against its goal and the public results.

`mnist-search frontier` reads each `results/budget-*/` folder that `verify --out` wrote and writes
`results/frontier.md` and `results/frontier.png`. Only reading and formatting: nothing is trained
and MLflow is not touched. A folder's `verify.json` is read where there is one; folders written
before verify wrote it are read from their `verify.md` table (the same figures, fewer details).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mnist_search.core.config import ConfigError, Recipe
from mnist_search.search.records import UNRECORDED_DEVICE

# The goals (issue 17), per budget: every seed's minimum test accuracy over epochs 13-15 at least
# `per_seed`, and (8k only) the mean of the seeds' epoch-15 accuracies at least `mean`.
GOALS: dict[int, tuple[float, float | None]] = {
    1_000: (0.9880, None),
    2_000: (0.9900, None),
    3_000: (0.9920, None),
    5_000: (0.9940, None),
    8_000: (0.9945, 0.9950),
}

# Published tiny-MNIST results (15 epochs unless said; test accuracy), one run or best-of-many:
# (params, accuracy, label). Marked on the plot; none is a multi-seed figure.
PUBLIC = (
    (7_918, 0.9948, "7,918: 99.48 % mean of its last 3 epochs, one run"),
    (6_260, 0.9940, "6,260: 99.40-99.44 % in its last 3 epochs, one run"),
    (4_862, 0.9907, "4,862: 99.07 % after 50 epochs, one run"),
    (997, 0.9876, "997: 98.76 % mean of 223 runs (99.05 % the best, picked on test)"),
)


@dataclass(frozen=True)
class SeedResult:
    seed: int
    final: float  # test accuracy after the last epoch
    min_last3: float  # the minimum over the last 3 epochs


@dataclass
class Point:
    """One verified architecture (the one a results folder exported)."""

    folder: str  # e.g. budget-1k
    budget: int
    study: str
    trial: int
    params: int
    seeds: list[SeedResult]
    wall_seconds: float
    device: str
    command: str
    spec: dict | None = None
    search: dict = field(default_factory=dict)
    precision: str = "fp32"  # the recipe's (Recipe.precision), from the folder's experiment.yaml
    teacher: str | None = None  # the recipe's (Recipe.teacher): distilled from it, with distill / T
    distill: tuple[float, float] | None = None
    ema: float | None = None  # the recipe's (Recipe.ema): measured on averaged weights
    swa_from: int | None = None  # the recipe's (Recipe.swa_from): on their mean from this epoch
    optimizer: str = "sgd"  # the recipe's (Recipe.optimizer)
    smoke: str | None = None  # verified on less than the full protocol: what it trained on

    @property
    def mean(self) -> float:
        return statistics.fmean(s.final for s in self.seeds)

    @property
    def std(self) -> float:
        return statistics.stdev(s.final for s in self.seeds) if len(self.seeds) > 1 else 0.0

    @property
    def worst(self) -> float:
        return min(s.min_last3 for s in self.seeds)

    @property
    def goal(self) -> tuple[float, float | None] | None:
        return GOALS.get(self.budget)

    @property
    def goal_met(self) -> bool | None:
        if self.goal is None or self.smoke is not None:  # a smoke verify claims no goal
            return None
        per_seed, mean = self.goal
        return self.worst >= per_seed and (mean is None or self.mean >= mean)


def goal_text(goal: tuple[float, float | None] | None) -> str:
    if goal is None:
        return "—"
    per_seed, mean = goal
    text = f"every seed ≥ {100 * per_seed:.2f} %"
    return f"mean ≥ {100 * mean:.2f} %, {text}" if mean is not None else text


def point_line(p) -> str:
    """One verified point in a line, as `mnist-search frontier` prints it."""
    verdict = {True: "held", False: "missed", None: "no goal"}[p.goal_met]
    return (
        f"< {p.budget:>5,}  {p.folder:<18} {p.params:>6,} params  {100 * p.mean:.2f} % ± {100 * p.std:.2f}  "
        f"worst seed {100 * p.worst:.2f} %  goal ({goal_text(p.goal)}) {verdict}"
    )


def load_points(results: Path) -> list[Point]:
    """Every `budget-*` folder under `results` with a verify table, by budget then params."""
    folders = sorted(p for p in results.glob("budget-*") if (p / "verify.md").is_file())
    if not folders:
        raise ConfigError(f"{results}: no budget-*/verify.md (write them with `mnist-search verify --out`)")
    return sorted((_point(f) for f in folders), key=lambda p: (p.budget, p.params, p.folder))


def _point(folder: Path) -> Point:
    """One folder's point; a record that is not what `verify --out` writes is a ConfigError."""
    name = folder / ("verify.json" if (folder / "verify.json").is_file() else "verify.md")
    try:
        point = _from_json(folder) if name.name == "verify.json" else _from_table(folder)
        experiment = folder / "experiment.yaml"
        if experiment.is_file():
            recipe = (yaml.safe_load(experiment.read_text()) or {}).get("recipe") or {}
            point.precision = recipe.get("precision", "fp32")
            point.teacher = recipe.get("teacher")
            point.ema = recipe.get("ema")
            point.swa_from = recipe.get("swa_from")
            point.optimizer = recipe.get("optimizer", Recipe().optimizer)
            if point.teacher is not None:
                point.distill = (
                    float(recipe.get("distill", Recipe().distill)),
                    float(recipe.get("temperature", Recipe().temperature)),
                )
        return point
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        StopIteration,
        yaml.YAMLError,
    ) as exc:
        raise ConfigError(
            f"{name}: not a record `mnist-search verify --out` writes ({type(exc).__name__}: {exc})"[:300]
        ) from None


def _from_json(folder: Path) -> Point:
    record = json.loads((folder / "verify.json").read_text())
    exported = record["exported"]["trial"]
    best = next(c for c in record["candidates"] if c["trial"] == exported)
    return Point(
        folder=folder.name,
        budget=record["budget"],
        study=record["study"],
        trial=exported,
        params=best["params"],
        seeds=[SeedResult(s["seed"], s["test_acc"][-1], s["min_last3"]) for s in best["seeds"]],
        wall_seconds=record["wall_seconds"],
        device=record["device"],
        command=record["command"],
        spec=best["spec"],
        search=record.get("search") or {},
        smoke=None if (record.get("protocol") or {}).get("full", True) else record["protocol"]["text"],
    )


def _from_table(folder: Path) -> Point:
    """A verify.md written before verify.json existed: the exported trial's rows."""
    text = (folder / "verify.md").read_text()
    study, trial = re.search(r"^# Verified: study (\S+), trial (\d+)", text, re.MULTILINE).groups()
    rows = re.findall(
        rf"^\| {trial} \| ([\d,]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| \w+ \|$", text, re.MULTILINE
    )
    wall, device = re.search(r"Wall time of this verify: ([\d.]+) min on (\w+)", text).groups()
    spec_file = folder / "spec.yaml"
    spec = yaml.safe_load(spec_file.read_text())["spec"] if spec_file.is_file() else None
    return Point(
        folder=folder.name,
        budget=int(re.search(r"-b(\d+)$", study)[1]),
        study=study,
        trial=int(trial),
        params=int(rows[0][0].replace(",", "")),
        seeds=[SeedResult(int(seed), float(final), float(low)) for _, seed, final, low in rows],
        wall_seconds=float(wall) * 60,
        device=device,
        command=re.search(r"^    (mnist-search verify .*)$", text, re.MULTILINE)[1],
        spec=spec,
    )


def _recipe_note(p: Point) -> str:
    """How a point was trained when not in float32 (Recipe.precision), not with SGD
    (Recipe.optimizer), not from the labels alone (Recipe.teacher) or not measured on the
    weights as trained (Recipe.ema, Recipe.swa_from)."""
    note = "" if p.precision == "fp32" else f", trained in {p.precision} (autocast)"
    if p.optimizer != "sgd":
        note += f", trained with {_optimizer_name(p)}"
    if p.teacher is not None and p.distill is not None:
        weight, temperature = p.distill
        note += f", distilled from `{p.teacher}` (weight {weight:g}, temperature {temperature:g})"
    if p.ema is not None:
        note += f", measured on a moving average of its weights (decay {p.ema:g})"
    if p.swa_from is not None:
        note += f", measured on the mean of its weights from epoch {p.swa_from} on (SWA)"
    return note


def _optimizer_name(p: Point) -> str:
    return {"adam": "Adam", "adamw": "AdamW"}.get(p.optimizer, p.optimizer)


def _recipe_tag(p: Point) -> str:
    tags = (
        ([] if p.precision == "fp32" else [p.precision])
        + ([] if p.optimizer == "sgd" else [_optimizer_name(p)])
        + ([] if p.teacher is None else ["distilled"])
        + ([] if p.ema is None and p.swa_from is None else ["averaged"])
        + ([] if p.smoke is None else [p.smoke])
    )
    return f" ({', '.join(tags)})" if tags else ""


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _arch(spec: dict | None) -> str:
    if spec is None:
        return "—"
    stages = " → ".join("(" + ", ".join(map(str, s)) + ")" for s in spec["stages"])
    trans = ", ".join(map(str, spec["transitions"]))
    convs = "3x3 convs (depthwise-separable after the first)" if spec.get("separable") else "3x3 convs"
    pool = ", anti-aliased (blur) max-pool" if spec.get("pool") == "blur" else ""
    return (
        f"{convs} {stages}, 1x1 transition {trans}{pool}, dropout {spec['dropout']:.3f}, {spec['head']} head"
    )


def _pinned(command: str, study: str) -> str:
    """A recorded `study` command that left the experiment to the budget's default, with the one
    it searched written out after --budget: its study is named `<experiment>-b<budget>`, and the
    default for a budget may change (config.DEFAULT_SEARCHES) where the study's experiment cannot."""
    words = shlex.split(command)
    named = re.fullmatch(r"(.+)-b\d+", study)
    if (
        words[:2] != ["mnist-search", "study"]
        or not named
        or {"--experiment", "--study-name", "--study"} & set(words)
    ):
        return command
    at = words.index("--budget") + 2 if "--budget" in words else 2
    return shlex.join([*words[:at], "--experiment", named[1], *words[at:]])


def _search_line(point: Point) -> str:
    s = point.search
    if not s:
        return "not recorded by this folder's verify (it predates that record): see [README.md](README.md)"
    command = (
        f"`{_pinned(s['command'], s['study'])}`" if s.get("command") else "(the study recorded no command)"
    )
    recorded = [d for d in s.get("devices") or [] if d != UNRECORDED_DEVICE]
    devices = ", ".join(recorded) or "a device the study did not record"
    if recorded and len(recorded) < len(s["devices"]):
        devices += " and, for trials made before trials recorded it, a device not recorded"
    return (
        f"study `{s['study']}`: {s['proposals']} proposal{'' if s['proposals'] == 1 else 's'}, "
        f"{s['trained']} trained "
        f"({s['trial_seconds'] / 60:.0f} min of trial wall time summed over workers, on {devices}); {command}"
    )


def frontier_markdown(points: list[Point], plot: str = "frontier.png") -> str:
    out = [
        "# The verified front: test accuracy against parameters",
        "",
        "Written by `mnist-search frontier` from the `results/budget-*/` folders (do not edit by hand).",
        "Every point was searched on validation and verified on the test set: all 60,000 training images,",
        "15 epochs, one run per seed. *min of epochs 13–15* is each seed's lowest test accuracy over its",
        "last 3 epochs; a goal holds when every seed's is at or above it.",
        "",
        "| budget | result | params | test acc, mean ± std (epoch 15) | min of epochs 13–15, per seed | goal | held |",
        "| ---: | --- | ---: | ---: | ---: | --- | :---: |",
    ]
    for p in points:
        seeds = " / ".join(f"{100 * s.min_last3:.2f}" for s in p.seeds) + " %"
        held = {True: "**yes**", False: "no", None: "—"}[p.goal_met]
        out.append(
            f"| < {p.budget:,} | [`{p.folder}/`]({p.folder}/){_recipe_tag(p)} | {p.params:,} | {_pct(p.mean)} ± "
            f"{100 * p.std:.2f} | {seeds} | {goal_text(p.goal)} | {held} |"
        )
    out += [
        "",
        f"![params against test accuracy, with the public results]({plot})",
        "",
        "Public results marked on the plot (one run each, or the best of many; none over seeds):",
        "",
        *[f"- {label}" for _, _, label in PUBLIC],
        "",
        "## Each point",
        "",
    ]
    for p in points:
        out += [
            f"### `{p.folder}/` — {p.params:,} parameters, budget {p.budget:,}",
            "",
            f"- Architecture: {_arch(p.spec)}; trial {p.trial} of study `{p.study}`{_recipe_note(p)}.",
            "- Per seed (epoch 15 / min of 13–15): "
            + "; ".join(f"seed {s.seed} {_pct(s.final)} / {_pct(s.min_last3)}" for s in p.seeds)
            + ".",
            f"- Search: {_search_line(p)}.",
            f"- Verify: `{p.command}` — {p.wall_seconds / 60:.1f} min wall on {p.device}.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def frontier_plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    edges = [0, *sorted(GOALS)]
    for low, high in itertools.pairwise(edges):
        per_seed, _ = GOALS[high]
        ax.hlines(100 * per_seed, low, high, colors="C2", linestyles="--", lw=1)
    ax.plot([], [], "C2--", lw=1, label="goal: every seed's min of epochs 13–15")
    xs = [p.params for p in points]
    ax.errorbar(
        xs, [100 * p.mean for p in points], yerr=[100 * p.std for p in points], fmt="o", color="C0",
        capsize=3, label="mnist-search: mean ± std over 3 seeds (epoch 15)",
    )  # fmt: skip
    ax.scatter(
        xs,
        [100 * p.worst for p in points],
        marker="v",
        color="C3",
        zorder=3,
        label="worst seed, min of 13–15",
    )
    for i, p in enumerate(points):
        # Two points at nearly the same place (976 and 997 params, both 98.80 %): the second's
        # label goes to the left, not over the first's.
        crowded = any(abs(q.params - p.params) < 300 and abs(q.mean - p.mean) < 0.0005 for q in points[:i])
        ax.annotate(
            f"{p.params:,}", (p.params, 100 * p.mean), textcoords="offset points", fontsize=8,
            xytext=(-5, 5) if crowded else (5, 5), ha="right" if crowded else "left",
        )  # fmt: skip
    ax.scatter(
        [x for x, _, _ in PUBLIC], [100 * y for _, y, _ in PUBLIC], marker="x", color="grey",
        label="public results (one run / best of many)",
    )  # fmt: skip
    for x, y, _ in PUBLIC:
        ax.annotate(
            f"{x:,}", (x, 100 * y), textcoords="offset points", xytext=(5, -10), fontsize=8, color="grey"
        )
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_xlim(0, 8_500)
    ax.set_title("Verified front: searched on validation, verified on test over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_frontier(results: Path) -> list[Point]:
    """results/frontier.md and results/frontier.png from the results folders; the points."""
    points = load_points(results)
    (results / "frontier.md").write_text(frontier_markdown(points))
    frontier_plot(points, results / "frontier.png")
    return points
