"""Weight averaging: an exponential moving average of a network's weights (`recipe.ema`), or
their plain mean from an epoch on (`recipe.swa_from`, stochastic weight averaging).

torch's `AveragedModel` keeps the average, updated with torch's EMA lerp and a warm-up
(tf.train.ExponentialMovingAverage's `num_updates`): update t uses decay min(decay,
(1 + t) / (10 + t)), so after the first epoch the average is not still mostly the
initialisation. Element-wise, so replicas packed in one network are averaged independently,
exactly as if each were trained alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.swa_utils import AveragedModel

from mnist_search.speed.packed import PackedNet, SeparatePack


def warmed_decay(decay: float, step: int) -> float:
    """The decay of averaging step `step` (0-based): (1 + t) / (10 + t) until that exceeds `decay`."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage(AveragedModel):
    """A moving average of a pack's parameters (with `decay` None, their plain mean: every update
    weighs the same); `.module` is the averaged pack. Its buffers are
    the trained pack's, copied at each update: the caller recomputes BatchNorm statistics for
    the averaged weights before measuring them.

    The copy gets dropout generators of its own, seeded like the training ones: recomputing its
    BatchNorm statistics runs it in train mode, and that must draw neither from the training
    streams nor from the global generator (replica k would then depend on K)."""

    def __init__(
        self, net: PackedNet | SeparatePack, decay: float | None, seeds: Sequence[int], device
    ) -> None:
        # decay None: torch's own equal-weight mean of every update (stochastic weight averaging)
        super().__init__(net, multi_avg_fn=None if decay is None else self._lerp, use_buffers=False)
        self.decay, self.steps = decay, 0  # steps: averaging steps taken (the first is a copy)
        self.module.set_dropout_generators([torch.Generator(device=device).manual_seed(s) for s in seeds])

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        torch._foreach_lerp_(averaged, current, 1 - warmed_decay(self.decay, self.steps - 1))

    def update_parameters(self, model: PackedNet | SeparatePack) -> None:
        super().update_parameters(model)
        self.steps += 1
