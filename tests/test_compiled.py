"""compiled.py: a pack's training steps through torch.compile as one graph, its dropout drawn
beforehand from the same generators — the same training as uncompiled (benchmarks/replica_speed.py
measures it)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from mnist_search.core.model import build_model
from mnist_search.speed.packed import pack

from .device.compiled_check import SPEC as MASK  # dropout at p = 0.1: a mask of one draw per element
from .device.compiled_check import trained  # two epochs of train_epoch, compiled or not
from .test_packed import SEEDS, small

CPU = torch.device("cpu")

# Dropout at p = 0.05: drawn by positions.
POSITIONS = MASK.model_copy(update={"dropout": 0.05, "separable": True})


@pytest.mark.slow  # three inductor compilations: 20-35 s each with a cold cache
@pytest.mark.parametrize(
    ("spec", "seeds"),
    [(MASK, SEEDS), (POSITIONS, SEEDS), (POSITIONS, SEEDS[:1])],
    ids=["mask", "positions", "alone"],
)
def test_a_compiled_pack_trains_as_the_uncompiled_one(mnist, spec, seeds):
    """14 steps (7 batches x 2 epochs, the last batch smaller), in float64: every replica's
    losses, accuracies and weights are the uncompiled run's to 1e-9 — the same drops,
    augmentation and shuffling; for a pack of three and for one network alone (whose
    one-channel input is both memory layouts at once)."""
    torch._dynamo.reset()
    data = small(mnist, 416, dtype=torch.float64)
    eager_net, eager = trained(spec, data, seeds, CPU, compiled=False)
    compiled_net, compiled = trained(spec, data, seeds, CPU, compiled=True)
    for (losses, accs), (eager_losses, eager_accs) in zip(compiled, eager, strict=True):
        assert losses == pytest.approx(eager_losses, abs=1e-9)
        assert accs == eager_accs
    for key, value in eager_net.state_dict().items():
        torch.testing.assert_close(compiled_net.state_dict()[key], value, atol=1e-9, rtol=1e-9, msg=key)
    if len(seeds) > 1:
        assert compiled[-1][0][0] != compiled[-1][0][1]  # the replicas' own seeds: losses differ


def test_the_compiled_network_is_one_graph_with_its_dropout_drawn_outside(mnist):
    """No graph break: the whole forward pass, dropout included, is one compiled graph."""
    net = pack([build_model(POSITIONS, seed=s) for s in SEEDS]).to(memory_format=torch.channels_last).train()
    net.set_dropout_generators([torch.Generator().manual_seed(s) for s in SEEDS])
    x = mnist.train.x[:32].expand(-1, len(SEEDS), -1, -1).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="eagerly once first"):
        net.draw_keeps(32)  # the layouts its dropout draws in are not known yet
    net(x)
    keeps = net.draw_keeps(32)
    assert len(keeps) == 4 and all(k.dtype == torch.bool and k.shape[0] == 32 for k in keeps)
    explained = torch._dynamo.explain(net)(x, keeps)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    # (CompiledForward runs this graph through inductor in the equivalence test above: slow.)


@pytest.mark.parametrize("layout", ["grouped", "separate"])
@pytest.mark.parametrize("spec", [MASK, POSITIONS], ids=["mask", "positions"])
@pytest.mark.parametrize("replicas", [1, 3])
def test_drops_drawn_beforehand_are_the_ones_the_network_draws_itself(mnist, spec, layout, replicas):
    """Uncompiled, in training mode: a pack given `draw_keeps`' masks computes exactly what an
    identical pack drawing its own drops computes (both dropout draws, both layouts, a pack of
    one whose one-channel input is both memory layouts at once)."""
    seeds = SEEDS[:replicas]

    def fresh():
        net = pack([build_model(spec, seed=s) for s in seeds], layout).to(memory_format=torch.channels_last)
        net.set_dropout_generators([torch.Generator().manual_seed(s) for s in seeds])
        return net.train()

    x = mnist.train.x[:16].expand(-1, replicas, -1, -1).contiguous(memory_format=torch.channels_last)
    drawing, given = fresh(), fresh()
    with torch.no_grad():
        given.eval()(x[:1])  # what CompiledForward's probe does: the layouts, no draws
    given.train()
    for _ in range(2):  # two steps: the generators move on alike
        assert torch.equal(given(x, given.draw_keeps(16)), drawing(x))
