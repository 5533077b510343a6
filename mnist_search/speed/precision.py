"""`recipe.precision`: the forward and backward passes in bfloat16 under torch.autocast, or not.

The weights, optimiser, loss, BatchNorm re-estimation and every evaluation stay float32; whether
bf16 pays depends on the machine (docs/benchmarks.md)."""

from __future__ import annotations

import torch


def low_precision(precision: str, device_type: str) -> torch.autocast:
    """The autocast context of a recipe's `precision` on a device type ("fp32": a disabled one)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
