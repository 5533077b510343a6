"""Where a packed step goes: each convolution of a net alone, K = 1 against K replicas packed.

For every convolution of the spec (mnist_search.core.model.layer_plan), times forward + backward (the
weight's gradient, and the input's except at the first layer, as in training) on random inputs of
the training batch size, for one network (K = 1) and for K replicas in four ways:

- grouped: one conv with `groups=K` over channels-last maps, what PackedNet runs;
- grouped, contiguous: the same over NCHW-contiguous maps;
- block-diagonal: one dense conv whose weight is the K replicas' weights on its diagonal blocks
  (K times the multiply-adds of grouped, but a dense kernel over K times the channels);
- slices: K convs, one per replica's channel slice, concatenated (no copies of the weights).

Before timing, every packed way's output is checked equal to the grouped conv's. Each figure is
the best of `--repeats` rounds (rounds go over every layer and way, so a slow moment hits one
round, not one way). Prints ms per layer, the totals and, last, the ratio of each way's total to
K times the lone net's: below 1 a way does the replicas' convolutions for less than K lone nets
would.

    python benchmarks/conv_layouts.py [--experiment results/budget-8k/experiment.yaml] [--k 3]
        [--threads N] [--repeats 3] [--steps 30]

Run it alone: on 2 cores anything beside it moves the figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_search.core.config import load_experiment
from mnist_search.core.model import layer_plan
from mnist_search.workflows.runtime import available_cores, configure_threads

DEFAULT = Path(__file__).resolve().parent.parent / "results" / "budget-8k" / "experiment.yaml"
WAYS = ("K=1", "grouped", "grouped, contiguous", "block-diagonal", "slices")


def block_diagonal(weight: torch.Tensor, k: int) -> torch.Tensor:
    """A grouped conv's weight (K*co, ci, kh, kw) as the dense (K*co, K*ci, kh, kw) one."""
    co, ci = weight.shape[0] // k, weight.shape[1]
    dense = weight.new_zeros(k * co, k * ci, *weight.shape[2:])
    for r in range(k):
        dense[r * co : (r + 1) * co, r * ci : (r + 1) * ci] = weight[r * co : (r + 1) * co]
    return dense


def layer_ways(layer, k: int, batch: int, first: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The forward pass of `layer` for each way, as callables (training passes: `trained`)."""
    ci, co, g, size = layer.in_channels, layer.out_channels, layer.groups, layer.in_size
    conv = {"padding": layer.padding, "stride": layer.stride}

    def maps(channels: int, fmt) -> torch.Tensor:
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
        return x.requires_grad_(not first)

    lone = maps(ci, torch.channels_last)
    packed_cl = maps(k * ci, torch.channels_last)
    packed_cf = packed_cl.detach().contiguous().requires_grad_(not first)  # the same values
    w1 = torch.randn(co, ci // g, layer.kernel, layer.kernel, requires_grad=True)
    wk = torch.randn(k * co, ci // g, layer.kernel, layer.kernel, requires_grad=True)
    ways = {
        "K=1": lambda: F.conv2d(lone, w1, groups=g, **conv),
        "grouped": lambda: F.conv2d(packed_cl, wk, groups=k * g, **conv),
        "grouped, contiguous": lambda: F.conv2d(packed_cf, wk, groups=k * g, **conv),
        "slices": lambda: torch.cat(
            [
                F.conv2d(packed_cl[:, r * ci : (r + 1) * ci], wk[r * co : (r + 1) * co], groups=g, **conv)
                for r in range(k)
            ],
            1,
        ),
    }
    if g == 1:  # a depthwise conv has no dense form short of K*C full filters
        ways["block-diagonal"] = lambda: F.conv2d(packed_cl, block_diagonal(wk, k), **conv)
    return ways


def trained(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training pass: forward, then backward into the weight (and the input if it asks)."""

    def step() -> None:
        y = forward()
        y.backward(torch.ones_like(y))

    return step


def check_same(ways: dict[str, Callable[[], torch.Tensor]]) -> None:
    """Every packed way computes what the grouped conv does (else its timing means nothing)."""
    with torch.no_grad():
        reference = ways["grouped"]()
        for name, forward in ways.items():
            if name != "K=1" and not torch.allclose(forward(), reference, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"conv_layouts: the {name} way does not compute the grouped conv's output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=DEFAULT)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    configure_threads(args.threads)
    torch.manual_seed(0)
    exp = load_experiment(args.experiment)
    convs = [layer for layer in layer_plan(exp.spec) if layer.kind == "Conv2d"]
    forwards = [layer_ways(layer, args.k, exp.recipe.batch_size, i == 0) for i, layer in enumerate(convs)]
    for layer_forwards in forwards:
        check_same(layer_forwards)
    ways = [{name: trained(f) for name, f in layer_forwards.items()} for layer_forwards in forwards]
    best = [dict.fromkeys(w, float("inf")) for w in ways]
    for _ in range(args.repeats):
        for layer_best, layer_way in zip(best, ways, strict=True):
            for name, step in layer_way.items():
                for _ in range(3):  # warm-up: oneDNN picks and caches its kernels
                    step()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                layer_best[name] = min(layer_best[name], (time.perf_counter() - start) / args.steps * 1e3)

    print(
        f"{args.experiment}: {len(convs)} convolutions, batch {exp.recipe.batch_size}, K = {args.k}, "
        f"{args.threads} CPU thread(s), forward + backward, ms (best of {args.repeats} x {args.steps})"
    )
    print("  layer                        " + "".join(f"{w:>21}" for w in WAYS))
    totals = dict.fromkeys(WAYS, 0.0)
    for layer, layer_best in zip(convs, best, strict=True):
        name = (
            f"{layer.in_channels}->{layer.out_channels} {layer.kernel}x{layer.kernel}"
            f"{' dw' if layer.groups > 1 else ''} at {layer.in_size}"
        )
        cells = []
        for way in WAYS:
            ms = layer_best.get(way)
            cells.append(f"{ms:21.2f}" if ms is not None else f"{'-':>21}")
            totals[way] += ms if ms is not None else layer_best["grouped"]
        print(f"  {name:<29}" + "".join(cells))
    print("  total                        " + "".join(f"{totals[w]:21.2f}" for w in WAYS))
    if any("block-diagonal" not in layer_best for layer_best in best):
        print("  (block-diagonal: a depthwise conv has no dense form; its total counts grouped there)")
    lone = args.k * totals["K=1"]
    ratios = ", ".join(f"{w} {totals[w] / lone:.2f}" for w in WAYS[1:])
    print(f"convolutions of K={args.k} replicas against {args.k} lone nets' (below 1 pays): {ratios}")


if __name__ == "__main__":
    main()
