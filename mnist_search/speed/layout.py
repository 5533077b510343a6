"""How to lay out a pack of K replicas on this machine: "grouped" or "separate" (packed.py).

Both train the same replicas; only the speed differs, and it depends on the machine and the net:
on a GPU the grouped network pays many times over, on some CPUs a grouped step of a separable net
is slower than K separate ones (docs/benchmarks.md, "Packed replicas"). So on the CPU
`pick_layout` times a few training steps of each layout for the spec at hand (seconds, against
the minutes of a trial) and takes the faster. MNIST_SEARCH_PACK=grouped|separate pins it (for
bitwise-repeatable runs on one machine: the two layouts round differently, about 1e-7 in float32)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mnist_search.core.config import ArchSpec, Recipe
from mnist_search.core.model import build_model
from mnist_search.speed.packed import LAYOUTS, PackedNet, SeparatePack, pack
from mnist_search.speed.precision import low_precision

SETTING = "MNIST_SEARCH_PACK"
CHOICES = ("auto", *LAYOUTS)
# "separate" must beat "grouped" by this much to be chosen: near a tie, keep the grouped layout
# (one choice whatever the timing noise, as long as the machine is not clearly one way).
MARGIN = 0.10


class LayoutError(ValueError):
    """MNIST_SEARCH_PACK holds something else than auto, grouped or separate."""


def layout_setting() -> str:
    """MNIST_SEARCH_PACK (default auto), checked: commands call it before they write anything."""
    value = os.environ.get(SETTING, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise LayoutError(f"{SETTING}={os.environ[SETTING]}: unknown pack layout (use {', '.join(CHOICES)})")
    return value


def step_ms(
    spec: ArchSpec, replicas: int, batch_size: int, layout: str, steps: int, precision: str = "fp32"
) -> float:
    """Best wall ms of one training step (forward, backward, SGD step) over `steps` steps, on
    random images, forward in `precision` (a recipe's): a throwaway pack, nothing of a real
    training is touched."""
    net = pack([build_model(spec, seed=k) for k in range(replicas)], layout).to(
        memory_format=torch.channels_last
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, replicas, 28, 28, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (batch_size * replicas,), generator=generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    best = float("inf")
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        with low_precision(precision, "cpu"):
            logits = net(x)
        loss = F.cross_entropy(logits.float().reshape(-1, 10), y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def pick_layout(
    spec: ArchSpec,
    replicas: int,
    batch_size: int,
    device: torch.device,
    steps: int = 4,
    precision: str = "fp32",
) -> str:
    """The layout to train `replicas` replicas of `spec` with: MNIST_SEARCH_PACK when pinned; a
    pack of one and the GPU always "grouped" (the same network / measured to pay); on the CPU the
    faster of the two over a few steps, interleaved so that a slow moment hits both."""
    setting = layout_setting()
    if setting != "auto":
        return setting
    if replicas == 1 or device.type != "cpu":
        return "grouped"
    times = {layout: float("inf") for layout in LAYOUTS}
    with torch.random.fork_rng(devices=[]):  # the throwaway packs' dropout leaves the global RNG as it was
        for _ in range(2):
            for layout in LAYOUTS:
                ms = step_ms(spec, replicas, batch_size, layout, steps, precision)
                times[layout] = min(times[layout], ms)
    return "separate" if times["separate"] < (1 - MARGIN) * times["grouped"] else "grouped"


def pack_seeds(
    spec: ArchSpec, seeds: Sequence[int], recipe: Recipe, device: torch.device
) -> PackedNet | SeparatePack:
    """`spec` initialised with each seed, packed in the layout `pick_layout` chooses (`.layout`)
    for `recipe`'s batch size and precision."""
    layout = pick_layout(spec, len(seeds), recipe.batch_size, device, precision=recipe.precision)
    return pack([build_model(spec, seed=s) for s in seeds], layout)
