"""A pack's training forward pass through `torch.compile`, as one graph.

Traced as it is, a network with dropout breaks into a graph per dropout layer: its drops are
random draws of data-dependent size from per-replica generators (dropout.py, packed.py), which
dynamo cannot trace; and each break left the layers after it to be compiled one by one, per
input shape, until torch's recompile limit put them back to eager (BatchNorm's forward hit it on
the 7,520-param net). Here the drops are drawn first, eagerly — the same ones, from the same
generators in the same order, in the same memory order as the network would draw them itself —
and enter the compiled graph as keep-masks, so a replica trains as it does uncompiled, to float
rounding.

Only training steps run compiled (`train_epoch`'s `forward`); shapes are static, so an epoch's
last, smaller batch compiles once more. `benchmarks/replica_speed.py` measures it; on the 2-core
CPUs measured it has not paid enough for a recipe knob (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from mnist_search.speed.packed import PackedNet, SeparatePack


class CompiledForward:
    """Call like the pack in training: (B, K, 28, 28) -> (B, K, 10) logits."""

    def __init__(self, net: PackedNet | SeparatePack):
        self.net = net
        self.graph = torch.compile(net, dynamic=False)
        self._probed: tuple | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._probed != x.stride()[1:]:
            self._probe(x)
        return self.graph(x, self.net.draw_keeps(x.shape[0]))

    def _probe(self, x: torch.Tensor) -> None:
        """One image through the network eagerly, in evaluation mode (no draws, no statistics
        updated): each dropout layer records the memory layout its input has, which decides the
        order of its drops (a one-channel input is both layouts at once, so the first layers'
        may be either)."""
        with torch.no_grad():
            self.net.eval()
            self.net(x[:1])
            self.net.train()
        self._probed = x.stride()[1:]
