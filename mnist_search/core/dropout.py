"""Element-wise dropout on the CPU by the positions it drops, not by a mask of every element.

torch's `bernoulli_` draws one random number per element, a large share of a tiny net's training
step (docs/benchmarks.md). The searched nets drop 0-5 % of their activations, so here a drop's
position is drawn directly: in a run of independent Bernoulli(p) trials the gaps between drops
are geometric, so about p·n uniform draws give every dropped position of n elements (the same
distribution as one coin per element, exact up to float64). The forward pass is then
`x · 1/(1-p)` with those positions set to 0, its gradient likewise: no mask tensor, and for
packed replicas no mask to interleave. From p = 0.1 on (the seed models' dropout) a mask of one
cheap draw per element is faster, and is used.

Positions count in memory order (N, H, W, C for the channels-last tensors training uses), so a
replica's drops are the same whether it trains alone or in a pack (packed.py maps each
replica's positions into the packed layout).
"""

from __future__ import annotations

import math

import torch

# Below this p, drop by positions (`drop_positions` + `drop_at`); from it on, multiply by a mask of
# one cheap draw per element (`keep_mask`). One dropout layer's forward and backward at
# 64 x 14 x 24 x 24, 1 thread, the variants interleaved in one process while another job shared
# the 2 cores: positions 1.8 / 2.9 / 5.1 ms at p = 0.01 / 0.05 / 0.1, the mask 5.0-5.2 ms
# throughout, 4.6 at p = 0.2 (positions 6.5). Whole epochs of seed model 2 (p = 0.1, each run
# alone, one session): 36.7 and 38.2 s by positions against 35.7 s with the mask.
POSITIONS_BELOW = 0.1
_INT64_MIN = -(2**63)


def keep_bits(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """n booleans, each True (kept) with probability 1 - p, from `generator`: one 64-bit draw gives
    four uniform int16 (all 16 bits random), each compared with a threshold, so p is exact to
    1/65536; the draws took 4.5 ms for 3.7 M elements where bernoulli_ took 21.7 ms (2 cores)."""
    drops = round(p * 65536)
    if drops >= 65536:
        return torch.zeros(n, dtype=torch.bool)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(_INT64_MIN, None, generator=generator)
    return words.view(torch.int16)[:n] >= drops - 32768


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask (0 or 1/(1-p), float32) of `shape` (`keep_bits` in the shape's order)."""
    return keep_bits(shape.numel(), p, generator).view(shape).to(torch.float32).mul_(1.0 / (1.0 - p))


def drop_positions(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted positions in [0, n) to drop, each independently with probability p, drawn from
    `generator` (the global one when None): geometric gaps between drops,
    floor(log(1-u) / log(1-p)) + 1 from float64 uniforms."""
    if p <= 0 or n == 0:
        return torch.empty(0, dtype=torch.long)
    log_keep = math.log1p(-p)
    expected = n * p
    chunk = int(expected + 6 * math.sqrt(expected) + 16)  # enough gaps in one draw but rarely
    pieces, last = [], -1.0
    while last < n - 1:
        u = torch.rand(chunk, dtype=torch.float64, generator=generator)
        positions = torch.log1p(-u).div_(log_keep).floor_().add_(1).cumsum_(0).add_(last)
        pieces.append(positions)
        last = positions[-1].item()
    positions = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    return positions[positions < n].long()


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def memory_order(t: torch.Tensor) -> torch.Tensor:
    """A flat view of `t` in the order its elements lie in memory (contiguous or channels-last)."""
    if _layout(t) == torch.channels_last:
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.view(-1)


class DropAt(torch.autograd.Function):
    """x / (1 - p) with the elements at memory positions `index` zeroed; the gradient likewise."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, scale: float) -> torch.Tensor:
        layout = _layout(x)
        y = (x * scale).contiguous(memory_format=layout)
        memory_order(y).index_fill_(0, index, 0.0)
        ctx.save_for_backward(index)
        ctx.scale, ctx.layout = scale, layout
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        g = (grad * ctx.scale).contiguous(memory_format=ctx.layout)
        memory_order(g).index_fill_(0, index, 0.0)
        return g, None, None


def drop_at(x: torch.Tensor, index: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of `x` at the memory positions `index` (from `drop_positions`)."""
    return DropAt.apply(x, index, 1.0 / (1.0 - p))
