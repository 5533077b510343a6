"""CPU dropout by dropped positions (dropout.py): the distribution of one coin per element, the
same drops for a replica alone and in a pack, and the gradient of x / (1 - p) with those zeroed."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_search.core.dropout import drop_at, drop_positions, keep_bits, memory_order
from mnist_search.core.model import Dropout
from mnist_search.speed.packed import PackedDropout


@pytest.mark.parametrize("p", [0.001, 0.016, 0.1, 0.5, 0.9])
def test_drops_follow_one_independent_coin_per_element(p):
    n = 400_000
    g = torch.Generator().manual_seed(1)
    pos = drop_positions(n, p, g)
    assert pos.dtype == torch.long and pos.numel() > 0
    assert int(pos.min()) >= 0 and int(pos.max()) < n
    assert torch.all(pos[1:] > pos[:-1])  # sorted, each position once
    # The count is Binomial(n, p): within 5 standard deviations.
    assert abs(pos.numel() - n * p) < 5 * math.sqrt(n * p * (1 - p)), pos.numel()
    # Independence: the gap after a drop is geometric, P(gap = 1) = p, P(gap = 2) = p (1 - p).
    gaps = pos[1:] - pos[:-1]
    m = gaps.numel()
    for k, prob in [(1, p), (2, p * (1 - p))]:
        share = (gaps == k).sum().item()
        assert abs(share - m * prob) < 5 * math.sqrt(m * prob * (1 - prob)) + 1, (k, share, m * prob)
    # Uniform over the positions: each tenth of the range holds a tenth of the drops.
    tenths = torch.bincount(pos * 10 // n, minlength=10).double()
    assert torch.all((tenths - pos.numel() / 10).abs() < 5 * math.sqrt(pos.numel() * 0.09)), tenths


def test_the_same_generator_state_gives_the_same_drops_and_another_seed_others():
    a = drop_positions(50_000, 0.05, torch.Generator().manual_seed(3))
    b = drop_positions(50_000, 0.05, torch.Generator().manual_seed(3))
    c = drop_positions(50_000, 0.05, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert drop_positions(0, 0.5).numel() == 0 and drop_positions(100, 0.0).numel() == 0


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_drop_at_scales_zeroes_and_passes_the_same_gradient(layout):
    p = 0.2
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=layout).requires_grad_()
    index = drop_positions(x.numel(), p, torch.Generator().manual_seed(0))
    y = drop_at(x, index, p)
    assert y.is_contiguous(memory_format=layout)
    keep = torch.ones(x.numel())
    keep[index] = 0
    flat_x = memory_order(x.detach())
    torch.testing.assert_close(memory_order(y.detach()), flat_x * keep / (1 - p))
    grad = torch.randn_like(x)
    y.backward(grad)
    torch.testing.assert_close(
        memory_order(x.grad), memory_order(grad.contiguous(memory_format=layout)) * keep / (1 - p)
    )


@pytest.mark.parametrize("p", [0.03, 0.1], ids=["positions", "mask"])
def test_a_replica_drops_in_a_pack_what_it_drops_alone(p):
    """Replica k of a K = 3 PackedDropout zeroes exactly the elements a lone Dropout-of-one with
    replica k's generator zeroes, in the channels-last layout training uses and in NCHW, by
    positions (p < 0.1) and by mask."""
    k, c = 3, 5
    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(8, k * c, 6, 6).contiguous(memory_format=layout) + 10  # no zeros of its own
        packed = PackedDropout(p, k).train()
        packed.generators = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
        y = packed(x)
        for i, seed in enumerate((7, 8, 9)):
            alone = PackedDropout(p, 1).train()
            alone.generators = [torch.Generator().manual_seed(seed)]
            part = x[:, i * c : (i + 1) * c].contiguous(memory_format=layout)
            torch.testing.assert_close(y[:, i * c : (i + 1) * c], alone(part), rtol=0, atol=0)
        dropped = (y == 0).float().mean().item()
        assert p / 2 < dropped < p * 1.5


@pytest.mark.parametrize("p", [0.04, 0.25], ids=["positions", "mask"])
def test_the_plain_dropout_module_drops_p_in_training_and_nothing_in_eval(p):
    d = Dropout(p)
    x = torch.ones(64, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    y = d.train()(x)
    assert set(y.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}  # in float32
    assert abs((y == 0).float().mean().item() - p) < 0.01
    assert torch.equal(d.eval()(x), x)


def test_keep_bits_use_all_16_bits_of_every_lane():
    """Each of the four int16 lanes of a 64-bit draw is uniform, its sign bit too (torch's
    default int64 random_ leaves the top bit 0: a quarter of the lanes would keep too often)."""
    n = 400_000
    bits = torch.stack([keep_bits(n, p, torch.Generator().manual_seed(5)) for p in (0.5, 0.25, 0.75)])
    for lane in range(4):
        for p, kept in zip((0.5, 0.25, 0.75), bits[:, lane::4]):
            share = kept.double().mean().item()
            m = kept.numel()
            assert abs(share - (1 - p)) < 5 * math.sqrt(p * (1 - p) / m), (lane, p, share)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_bits_keep_one_minus_p(p):
    n = 1_000_000
    g = torch.Generator().manual_seed(2)
    kept = keep_bits(n, p, g).sum().item()
    assert abs(kept - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p)), kept
    assert torch.equal(
        keep_bits(1001, p, torch.Generator().manual_seed(3)),
        keep_bits(1001, p, torch.Generator().manual_seed(3)),
    )
