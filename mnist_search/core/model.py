"""Networks from specs, and their exact sizes, shapes and receptive fields — pure, no I/O.

Everything here is derived from one layer plan (`layer_plan(spec)`): `build_model` instantiates it,
`count_params`, `mult_adds` and `receptive_field` read it without building anything, and
`layer_table` prints it in the seed documents' torchsummary format. The tests check the plan
against a real forward pass, so the analytic numbers cannot drift from the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mnist_search.core.batchnorm import BatchNorm2d
from mnist_search.core.config import INPUT_SIZE, NUM_CLASSES, ArchSpec
from mnist_search.core.dropout import POSITIONS_BELOW, drop_at, drop_positions, keep_mask


@dataclass(frozen=True)
class Layer:
    kind: str  # torch class name: Conv2d, ReLU, BatchNorm2d, Dropout, MaxPool2d, BlurPool2d, AvgPool2d
    in_channels: int
    out_channels: int
    in_size: int  # spatial side before the layer, pixels
    out_size: int  # spatial side after the layer, pixels
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    p: float = 0.0  # dropout probability
    groups: int = 1  # Conv2d: in_channels for a depthwise conv (one filter per channel)

    @property
    def params(self) -> int:
        if self.kind == "Conv2d":  # no bias: BatchNorm or the next layer makes it redundant
            return self.kernel * self.kernel * self.in_channels // self.groups * self.out_channels
        if self.kind == "BatchNorm2d":
            return 2 * self.out_channels  # weight and bias; running stats are buffers
        return 0

    @property
    def mult_adds(self) -> int:
        if self.kind == "Conv2d":
            return self.params * self.out_size * self.out_size
        return 0


def layer_plan(spec: ArchSpec) -> list[Layer]:
    """The layers of `spec`, in order, with their channel counts and spatial sizes."""
    layers: list[Layer] = []
    channels, size = 1, INPUT_SIZE
    pad = 1 if spec.padding else 0

    def add(kind: str, out_channels: int, out_size: int, **kw) -> None:
        nonlocal channels, size
        layers.append(Layer(kind, channels, out_channels, size, out_size, **kw))
        channels, size = out_channels, out_size

    for index, stage in enumerate(spec.stages):
        if index > 0:
            if spec.pool == "blur":  # 2x2 max at stride 1 (n -> n - 1), blur at stride 2 (-> n // 2)
                add("MaxPool2d", channels, size - 1, kernel=2, stride=1)
                add("BlurPool2d", channels, (size + 1) // 2, kernel=3, stride=2, padding=1)
            else:
                add("MaxPool2d", channels, size // 2, kernel=2, stride=2)
            add("Conv2d", spec.transitions[index - 1], size)
        for width in stage:
            if spec.separable and channels > 1:  # depthwise 3x3, then 1x1 to the width
                add("Conv2d", channels, size + 2 * pad - 2, kernel=3, padding=pad, groups=channels)
                add("Conv2d", width, size)
            else:
                add("Conv2d", width, size + 2 * pad - 2, kernel=3, padding=pad)
            add("ReLU", channels, size)
            if spec.batchnorm:
                add("BatchNorm2d", channels, size)
            if spec.dropout > 0:
                add("Dropout", channels, size, p=spec.dropout)
    add("Conv2d", NUM_CLASSES, size)  # 1x1 to class scores
    if spec.head == "conv":
        add("Conv2d", NUM_CLASSES, 1, kernel=size)  # the seed's 7x7 over the whole map
    else:
        add("AvgPool2d", NUM_CLASSES, 1, kernel=size, stride=size)
    return layers


class Dropout(nn.Dropout):
    """Element-wise dropout with the same semantics as nn.Dropout, faster on CPU (see
    dropout.py). CUDA keeps torch's own kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p >= POSITIONS_BELOW:
            return x * keep_mask(x.shape, self.p).to(x.dtype)
        return drop_at(x, drop_positions(x.numel(), self.p), self.p)


class BlurPool2d(nn.Module):
    """A fixed binomial [1, 2, 1]^2 / 16 blur of every channel at stride 2 over reflect-padded maps
    (the second half of Zhang 2019's anti-aliased max-pool). No parameters: the kernel is a
    non-persistent buffer, so state dicts are those of the max-pooled network; any number of
    channels (a pack's K*C as well)."""

    def __init__(self):
        super().__init__()
        row = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (row[:, None] * row[None, :] / 16).view(1, 1, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 3, 3), stride=2, groups=c)


def layer_module(layer: Layer, replicas: int = 1, dropout=None) -> nn.Module:
    """The torch module of one planned layer; with `replicas` K, K side-by-side copies (a conv
    with K times the channels and K times the groups, BatchNorm over K times the channels) and dropout
    made by `dropout(p)` (packed.py passes its per-replica one)."""
    k = replicas
    if layer.kind == "Conv2d":
        return nn.Conv2d(
            layer.in_channels * k, layer.out_channels * k, layer.kernel,
            padding=layer.padding, bias=False, groups=k * layer.groups,
        )  # fmt: skip
    if layer.kind == "ReLU":
        return nn.ReLU(inplace=True)
    if layer.kind == "BatchNorm2d":
        return BatchNorm2d(layer.out_channels * k)  # nn.BatchNorm2d, faster CPU training (batchnorm.py)
    if layer.kind == "Dropout":
        return (dropout or Dropout)(layer.p)
    if layer.kind == "MaxPool2d":
        return nn.MaxPool2d(layer.kernel, layer.stride)
    if layer.kind == "BlurPool2d":
        return BlurPool2d()
    if layer.kind == "AvgPool2d":
        return nn.AvgPool2d(layer.kernel)
    raise ValueError(f"unknown layer kind {layer.kind}")


class TinyNet(nn.Module):
    """A network of the seed family; `spec` travels with it (and with its checkpoints)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.layers = nn.Sequential(*(layer_module(layer) for layer in layer_plan(spec)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)  # (N, 10) logits


class WithNormalisation(nn.Module):
    """The one input contract of every model we hand out (MLflow, the registry, `export`): raw
    pixels in [0, 1], shape (N, 1, 28, 28) -> 10 logits; MNIST's normalisation is inside."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(spec: ArchSpec, seed: int | None = None) -> TinyNet:
    """The only constructor of networks. With `seed`, the initial weights depend on it alone
    (the global RNG is left as it was)."""
    if seed is None:
        return TinyNet(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet(spec)


def count_params(spec: ArchSpec) -> int:
    """Trainable parameters of `build_model(spec)`, computed from the spec alone."""
    return sum(layer.params for layer in layer_plan(spec))


def mult_adds(spec: ArchSpec) -> int:
    """Multiply-accumulates for one 28x28 image (convolutions; BN/ReLU/pooling are negligible)."""
    return sum(layer.mult_adds for layer in layer_plan(spec))


@dataclass(frozen=True)
class RFRow:
    layer: str
    n_in: int  # spatial side in, pixels
    n_out: int
    j_in: int  # jump: input pixels between adjacent features
    j_out: int
    r_in: int  # receptive field side, input pixels
    r_out: int


def receptive_field(spec: ArchSpec) -> list[RFRow]:
    """Per conv/pool layer, with r_out = r_in + (k-1)*j_in and j_out = j_in*stride."""
    rows: list[RFRow] = []
    jump, rf = 1, 1
    counts: dict[str, int] = {}
    for layer in layer_plan(spec):
        if layer.kind not in ("Conv2d", "MaxPool2d", "BlurPool2d", "AvgPool2d"):
            continue
        j_out = jump * layer.stride
        r_out = rf + (layer.kernel - 1) * jump
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        name = f"{layer.kind}-{counts[layer.kind]} ({layer.kernel}x{layer.kernel})"
        rows.append(RFRow(name, layer.in_size, layer.out_size, jump, j_out, rf, r_out))
        jump, rf = j_out, r_out
    return rows


def layer_table(spec: ArchSpec) -> str:
    """The seed documents' torchsummary table: Layer (type), Output Shape, Param #, totals."""
    line = "-" * 64
    out = [line, f"{'Layer (type)':>25}  {'Output Shape':>25} {'Param #':>15}", "=" * 64]
    for index, layer in enumerate(layer_plan(spec), start=1):
        shape = f"[-1, {layer.out_channels}, {layer.out_size}, {layer.out_size}]"
        out.append(f"{layer.kind + '-' + str(index):>25}  {shape:>25} {layer.params:>15,}")
    total = count_params(spec)
    out += [
        "=" * 64,
        f"Total params: {total:,}",
        f"Trainable params: {total:,}",
        "Non-trainable params: 0",
        line,
    ]
    return "\n".join(out)


def receptive_field_table(spec: ArchSpec) -> str:
    head = f"{'Layer':<22}{'n_in':>6}{'n_out':>7}{'j_in':>6}{'j_out':>7}{'r_in':>6}{'r_out':>7}  RF"
    out = [head, "-" * len(head)]
    for r in receptive_field(spec):
        out.append(
            f"{r.layer:<22}{r.n_in:>6}{r.n_out:>7}{r.j_in:>6}{r.j_out:>7}{r.r_in:>6}{r.r_out:>7}"
            f"  {r.r_out}x{r.r_out}"
        )
    return "\n".join(out)
