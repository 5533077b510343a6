"""mnist_search.core.batchnorm.BatchNorm2d against torch's own BatchNorm, computed in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_search.core.batchnorm import BatchNorm2d
from mnist_search.core.config import ArchSpec
from mnist_search.core.model import build_model


@pytest.fixture(autouse=True)
def two_threads():
    """Its own path is for processes with 2+ torch threads (1-thread workers keep torch's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def pair(c: int, momentum: float | None = 0.1) -> tuple[BatchNorm2d, nn.BatchNorm2d]:
    ours = BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 2.0, c))
        ours.bias.copy_(torch.linspace(-1.0, 1.0, c))
    ref = nn.BatchNorm2d(c, momentum=momentum).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def batch(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels with their own offsets and scales, as after a conv + ReLU
    x = torch.randn(n, c, size, size, generator=g) * torch.linspace(0.5, 3.0, c).view(1, c, 1, 1) + 2.0
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("n", "c", "size"), [(32, 10, 12), (16, 24, 9), (3, 10, 5)])
def test_training_step_matches_torch_in_outputs_gradients_and_statistics(n, c, size):
    # (3, 10, 5): 75 positions, not a multiple of the 8 rows the tiling lays side by side
    ours, ref = pair(c)
    x = batch(n, c, size, seed=c).requires_grad_()
    xd = x.detach().double().requires_grad_()
    assert ours._own_path(x)
    g = torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last
    )
    y, yd = ours(x), ref(xd)
    y.backward(g)
    yd.backward(g.double())
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), yd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad.double(), ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad.double(), ref.bias.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_mean.double(), ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.double(), ref.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 1
    # the statistics moved: a test of nothing would pass with both at their initial values
    assert ours.running_mean.min() > 0.15


def test_cumulative_average_of_update_bn_matches_torch():
    # momentum None: the plain average over batches (train.recompute_bn_stats via update_bn)
    ours, ref = pair(12, momentum=None)
    xs = [batch(20, 12, 10, seed=s) for s in range(3)]
    with torch.no_grad():
        for x in xs:
            ours(x)
            ref(x.double())
    torch.testing.assert_close(ours.running_mean.double(), ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var.double(), ref.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == 3


def test_bfloat16_autocast_gives_bfloat16_like_torch():
    ours, ref = pair(10)
    x = batch(32, 10, 12, seed=3).bfloat16().requires_grad_()
    assert ours._own_path(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    yd = ref(x.detach().double())
    torch.testing.assert_close(y.double(), yd, rtol=2e-2, atol=2e-2)  # bf16 has 8 bits of mantissa


def test_torch_kernel_where_it_is_fast_or_the_case_is_not_ours():
    ours16, _ = pair(16)
    assert not ours16._own_path(batch(8, 16, 6, seed=0))  # a multiple of 16 channels
    ours, _ = pair(10)
    x = batch(8, 10, 6, seed=0)
    assert not ours._own_path(x.contiguous())  # NCHW
    ours.eval()
    assert not ours._own_path(x)  # evaluation, export
    ours.train()
    assert not ours._own_path(x.double())
    assert not pair(48)[0]._own_path(batch(8, 48, 6, seed=0))  # wide: torch's is as fast
    assert ours._own_path(x)
    with pytest.MonkeyPatch.context() as mp:  # while torch.compile traces: inductor's own kernels
        mp.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not ours._own_path(x)
    torch.set_num_threads(1)
    assert not ours._own_path(x)  # one thread: torch's kernel is fast


def test_models_are_built_with_it_and_keep_torch_state_dict_keys():
    spec = ArchSpec(stages=[[8, 12], [12, 16]], transitions=[8], batchnorm=True, dropout=0.0, head="gap")
    model = build_model(spec, seed=0)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 4 and all(isinstance(m, BatchNorm2d) for m in norms)
    assert type(norms[0]).__name__ == "BatchNorm2d"  # layer tables read as before
    plain = nn.BatchNorm2d(8)
    assert list(norms[0].state_dict()) == list(plain.state_dict())
