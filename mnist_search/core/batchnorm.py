"""BatchNorm2d whose CPU training step on 2+ threads does not use torch's channels-last kernel.

Training keeps activations channels-last (training/train.py). On some CPUs torch's BatchNorm
kernel for that layout is slow on 2 threads unless the channel count is a multiple of 16 (AVX-512
lanes), and the searched nets' widths (4-48, times K when packed) rarely are (docs/benchmarks.md,
"One epoch"). Here the per-channel sums are matrix-vector products over the (N·H·W, C) view (BLAS
does column sums fast, torch's reductions over rows do not) and the normalisation is one fused
multiply-add with the channel vectors tiled to a multiple of 16. The variance takes a second
pass over the centred values (no E[x²] − mean² cancellation). Same numbers to float32 rounding
(tests/test_batchnorm.py checks outputs, gradients and running statistics against torch's kernel
in float64). On 1 thread torch's kernel is the faster one, so one-thread processes — each worker
of `study` and `verify` on the CPU — keep it, and so does `torch.compile`, which writes its own."""

from __future__ import annotations

import math

import torch
from torch import nn

LANES = 16  # float32 lanes of an AVX-512 register: torch's kernel is fast at multiples of this
# From 48 channels on (a pack of 3 replicas 16 wide, say) torch's kernel was as fast or faster
# (forward + backward over (64, C, 24, 24), 2 threads: C = 48 2.3 against 2.6 ms, C = 72 5.0
# against 8.2 ms).
WIDEST = 48


def _tiles(m: int, c: int) -> int:
    """How many rows of the (m, c) view to lay side by side so that a row is a multiple of
    LANES long (vectorised broadcasts); 1 when m does not split evenly."""
    rep = LANES // math.gcd(c, LANES)
    return rep if m % rep == 0 else 1


def _tiled(t2: torch.Tensor, rep: int) -> torch.Tensor:
    """The (m, c) view with `rep` rows side by side: (m / rep, rep * c), channel vectors repeated
    `rep` times broadcast over it."""
    m, c = t2.shape
    return t2.reshape(m // rep, rep * c)


def _column_sums(tiled: torch.Tensor, c: int) -> torch.Tensor:
    """Per-channel sums of a tiled view as one matrix-vector product (BLAS)."""
    ones = torch.ones(tiled.shape[0], dtype=tiled.dtype, device=tiled.device)
    return torch.mv(tiled.t(), ones).view(-1, c).sum(0)


class _TrainBatchNorm(torch.autograd.Function):
    """Training-mode batch normalisation of a channels-last (N, C, H, W) tensor, float32 or
    bfloat16 (autocast; then computed in float32 and returned in bfloat16, as torch's kernel does
    with float32 weights); updates the running statistics in place (`factor` as in torch's BatchNorm)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor: float, eps: float):
        with torch.autocast("cpu", enabled=False):  # our own float32 arithmetic
            return _TrainBatchNorm._forward(ctx, x, weight, bias, running_mean, running_var, factor, eps)

    @staticmethod
    def _forward(ctx, x, weight, bias, running_mean, running_var, factor: float, eps: float):
        n, c, h, w = x.shape
        m = n * h * w
        rep = _tiles(m, c)
        # a view (channels-last memory is (N, H, W, C)), or a bf16 input's float32 copy
        x2 = _tiled(x.permute(0, 2, 3, 1).reshape(m, c).float(), rep)
        mean = _column_sums(x2, c) / m
        centred = x2 - mean.repeat(rep)  # two passes: no E[x²] - mean² cancellation
        var = _column_sums(centred * centred, c) / m
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            running_var.mul_(1 - factor).add_(var * (m / max(m - 1, 1)), alpha=factor)  # unbiased, as torch
        out = torch.addcmul(bias.repeat(rep), centred, (weight * invstd).repeat(rep))
        ctx.save_for_backward(centred, weight, invstd)
        ctx.shape, ctx.rep = (n, h, w, c), rep
        return out.view(n, h, w, c).permute(0, 3, 1, 2).to(x.dtype)  # bf16 in, bf16 out, as torch's

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast("cpu", enabled=False):
            return _TrainBatchNorm._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        centred, weight, invstd = ctx.saved_tensors
        (n, h, w, c), rep = ctx.shape, ctx.rep
        m = n * h * w
        dtype = grad.dtype
        # reshape copies a gradient in another layout
        g2 = _tiled(grad.permute(0, 2, 3, 1).reshape(m, c).float(), rep)
        sum_g = _column_sums(g2, c)  # = grad of bias
        sum_gc = _column_sums(g2 * centred, c)
        scale = weight * invstd
        # d/dx of (x - mean) * invstd * weight over the batch: scale * (g - mean(g) - xhat * mean(g * xhat))
        coef_c = -scale * invstd * invstd * sum_gc / m
        shift = -scale * sum_g / m
        gx = torch.addcmul(shift.repeat(rep), centred, coef_c.repeat(rep))
        gx.addcmul_(g2, scale.repeat(rep))
        grad_x = gx.view(n, h, w, c).permute(0, 3, 1, 2).to(dtype)
        return grad_x, sum_gc * invstd, sum_g, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d`, trained on the CPU through `_TrainBatchNorm` where torch's kernel is slow."""

    def _own_path(self, x: torch.Tensor) -> bool:
        return (
            self.training
            and not torch.compiler.is_compiling()  # traced: inductor writes its own BatchNorm kernels
            and self.affine
            and self.track_running_stats
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and self.num_features % LANES != 0
            and self.num_features < WIDEST
            and torch.get_num_threads() > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._own_path(x):
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        # torch's rule: momentum None is a cumulative average (torch.optim.swa_utils.update_bn)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _TrainBatchNorm.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, factor, self.eps
        )
