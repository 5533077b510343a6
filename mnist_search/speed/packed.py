"""K replicas of one spec as one grouped network: K independent trainings at once.

Every conv of the spec becomes one conv with `groups=K` (K times the channels), so replica k owns
channels [k*C, (k+1)*C) of every layer and its weights never meet another replica's: BatchNorm,
ReLU, pooling and dropout act per channel, hence per replica. The input is (B, K, 28, 28), replica
k's images in channel k; the output (B, K, 10). `pack` builds one from K `TinyNet`s (their
weights, exactly) and `unpack` gives replica k back as a plain `TinyNet` that loads strictly.

Dropout draws each replica's drops (positions or a mask, dropout.py) from that replica's own
generator (seeded with its seed), in the same order whatever K, so replica k of a packed run
follows a run alone with seed k (`fit` trains one network as a pack of one; tested).

A pack has two layouts with the same interface: "grouped" (`PackedNet`, the grouped network above)
and "separate" (`SeparatePack`: K packs of one side by side, each replica its own small
convolutions). They train the same K replicas; which is faster depends on the machine and the
net (docs/benchmarks.md): layout.py measures and picks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnist_search.core.config import NUM_CLASSES, ArchSpec
from mnist_search.core.dropout import POSITIONS_BELOW, drop_at, drop_positions, keep_bits
from mnist_search.core.model import TinyNet, build_model, layer_module, layer_plan

# Parameter or buffer tensors of a TinyNet that are per channel (concatenated along dim 0 when
# packed); anything else (BatchNorm's num_batches_tracked) is one scalar shared by the replicas.
_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


class PackedDropout(nn.Module):
    """Element-wise dropout over (B, K*C, H, W), each replica's drops from its own generator
    (`generators`, set by the trainer; the global generator when None)."""

    def __init__(self, p: float, replicas: int):
        super().__init__()
        self.p, self.replicas = p, replicas
        self.generators: Sequence[torch.Generator] | None = None
        # The layout of its input when last called eagerly, in which its drops are drawn:
        # `keep_mask` for a compiled network needs it (compiled.py probes it).
        self.channels_last: bool | None = None

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`keep`: this step's keep-mask drawn beforehand (`keep_mask`), for a compiled network,
        which cannot draw it itself; without it the drops are drawn here."""
        scale = 1.0 / (1.0 - self.p)
        if keep is not None:
            return x * keep.to(x.dtype).mul(scale) if self.training and self.p > 0 else x
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.channels_last = channels_last
        if not self.training or self.p == 0:
            return x
        if x.device.type == "cpu" and self.p < POSITIONS_BELOW:
            return drop_at(x, self._drop_index(x.shape, channels_last), self.p)
        return x * self.keep_mask(x.shape, channels_last, x.device).to(x.dtype).mul_(scale)

    def keep_mask(self, shape: torch.Size, channels_last: bool, device: torch.device) -> torch.Tensor:
        """The keep-mask (bool, `shape` (B, K*C, H, W)) of exactly the drops `forward` would draw
        for an input of that shape and layout now, from the same generators in the same order."""
        k = self.replicas
        b, kc, h, w = shape
        c = kc // k
        gens = self.generators or [None] * k
        if device.type != "cpu":  # one kernel per replica, from its generator
            masks = [
                torch.empty((b, c, h, w), device=device).bernoulli_(1 - self.p, generator=g) for g in gens
            ]
            return (masks[0] if k == 1 else torch.stack(masks, 1)).view(b, kc, h, w).bool()
        # CPU: each replica draws its drops in its own memory order, (B, H, W, C) for the
        # channels-last tensors training uses, as it would alone (dropout.py).
        if self.p >= POSITIONS_BELOW:  # each replica's keep-bits, in its memory order, stacked like x
            alone = (b, h, w, c) if channels_last else (b, c, h, w)
            bits = [keep_bits(b * c * h * w, self.p, g).view(alone) for g in gens]
            keep = bits[0] if k == 1 else torch.stack(bits, 3 if channels_last else 1)
        else:
            keep = torch.ones(b * kc * h * w, dtype=torch.bool)
            keep[self._drop_index(shape, channels_last)] = False
        return keep.view(b, h, w, kc).permute(0, 3, 1, 2) if channels_last else keep.view(b, kc, h, w)

    def _drop_index(self, shape: torch.Size, channels_last: bool) -> torch.Tensor:
        """Below POSITIONS_BELOW: each replica's dropped positions (dropout.py), placed among the
        packed channels (replica i owns channels [i*C, (i+1)*C) at every pixel), in memory order."""
        k = self.replicas
        b, kc, h, w = shape
        c = kc // k
        run = c if channels_last else c * h * w  # a replica's elements lie in runs of this length
        index = []
        for i, g in enumerate(self.generators or [None] * k):
            j = drop_positions(b * c * h * w, self.p, g)
            index.append(j // run * (k * run) + i * run + j % run)
        return torch.cat(index) if k > 1 else index[0]

    def extra_repr(self) -> str:
        return f"p={self.p}, replicas={self.replicas}"


class PackedNet(nn.Module):
    """`replicas` copies of `spec`'s network side by side: (B, K, 28, 28) -> (B, K, 10) logits."""

    layout = "grouped"

    def __init__(self, spec: ArchSpec, replicas: int):
        super().__init__()
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.spec, self.replicas = spec, replicas
        self.layers = nn.Sequential(
            *(
                layer_module(layer, replicas, lambda p: PackedDropout(p, replicas))
                for layer in layer_plan(spec)
            )
        )

    def forward(self, x: torch.Tensor, keeps: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """`keeps`: every dropout layer's keep-mask for this step, from `draw_keeps` (compiled.py)."""
        if keeps is None:
            return self.layers(x).view(x.shape[0], self.replicas, NUM_CLASSES)
        masks = iter(keeps)
        for layer in self.layers:
            x = layer(x, next(masks)) if isinstance(layer, PackedDropout) else layer(x)
        return x.view(x.shape[0], self.replicas, NUM_CLASSES)

    def draw_keeps(self, batch: int) -> list[torch.Tensor | None]:
        """Every dropout layer's keep-mask for the next training step on `batch` images: the drops
        `forward` would draw itself, drawn now, so that a compiled network (compiled.py) gets
        them as inputs — random draws of data-dependent size from per-replica generators cannot
        be traced. Each layer draws in the layout its input had when last run eagerly."""
        device = next(self.parameters()).device
        shapes = [
            (batch, layer.out_channels * self.replicas, layer.out_size, layer.out_size)
            for layer in layer_plan(self.spec)
            if layer.kind == "Dropout"
        ]
        modules = [m for m in self.layers if isinstance(m, PackedDropout)]
        if any(m.channels_last is None for m in modules):
            raise RuntimeError("draw_keeps: run the network eagerly once first (its dropout layouts)")
        return [
            m.keep_mask(torch.Size(shape), m.channels_last, device) if m.training and m.p > 0 else None
            for m, shape in zip(modules, shapes, strict=True)
        ]

    def set_dropout_generators(self, generators: Sequence[torch.Generator] | None) -> None:
        for module in self.layers:
            if isinstance(module, PackedDropout):
                module.generators = generators

    def replica(self, k: int) -> TinyNet:
        """Replica k as a plain TinyNet (a copy, on the CPU), loaded strictly."""
        return unpack(self, k)


class SeparatePack(nn.Module):
    """The "separate" layout: K packs of one, each on its own input channel; the same interface
    as PackedNet, (B, K, 28, 28) -> (B, K, 10)."""

    layout = "separate"

    def __init__(self, nets: Sequence[PackedNet]):
        super().__init__()
        self.spec, self.replicas = nets[0].spec, len(nets)
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, keeps: Sequence[Sequence] | None = None) -> torch.Tensor:
        fmt = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        keeps = keeps or [None] * self.replicas
        return torch.cat(
            [net(x[:, k : k + 1].contiguous(memory_format=fmt), keeps[k]) for k, net in enumerate(self.nets)],
            1,
        )

    def draw_keeps(self, batch: int) -> list[list[torch.Tensor | None]]:
        """Each replica's `PackedNet.draw_keeps`."""
        return [net.draw_keeps(batch) for net in self.nets]

    def set_dropout_generators(self, generators: Sequence[torch.Generator] | None) -> None:
        for k, net in enumerate(self.nets):
            net.set_dropout_generators(None if generators is None else [generators[k]])

    def replica(self, k: int) -> TinyNet:
        return unpack(self, k)


LAYOUTS = ("grouped", "separate")


def pack(models: Sequence[TinyNet], layout: str = "grouped") -> PackedNet | SeparatePack:
    """One pack holding `models` (same spec) as its replicas, weights and BatchNorm statistics
    exactly theirs: a grouped PackedNet, or with layout "separate" a SeparatePack."""
    spec = models[0].spec
    if any(m.spec != spec for m in models):
        raise ValueError("pack: every replica must have the same spec")
    if layout not in LAYOUTS:
        raise ValueError(f"pack: unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    if layout == "separate":
        return SeparatePack([pack([m]) for m in models])
    net = PackedNet(spec, len(models)).to(next(models[0].parameters()).dtype)
    states = [m.state_dict() for m in models]
    packed = {}
    for key in net.state_dict():
        parts = [s[key].detach().to("cpu") for s in states]
        packed[key] = torch.cat(parts, 0) if key.rsplit(".", 1)[-1] in _PER_CHANNEL else parts[0]
    net.load_state_dict(packed, strict=True)
    return net


def unpack(net: PackedNet | SeparatePack, k: int) -> TinyNet:
    """Replica k of `net` as a plain TinyNet (CPU), its state loaded strictly."""
    if not 0 <= k < net.replicas:
        raise IndexError(f"replica {k} of {net.replicas}")
    if isinstance(net, SeparatePack):
        return unpack(net.nets[k], 0)
    model = build_model(net.spec).to(next(net.parameters()).dtype)
    state = {}
    for key, value in net.state_dict().items():
        value = value.detach().to("cpu")
        if key.rsplit(".", 1)[-1] in _PER_CHANNEL:
            size = value.shape[0] // net.replicas
            value = value[k * size : (k + 1) * size]
        state[key] = value.clone()
    model.load_state_dict(state, strict=True)
    return model
