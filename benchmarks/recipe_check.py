"""A recipe change judged on validation: one spec's seeds trained packed on the 50,000 / 10,000
split with recipe fields overridden, printing validation accuracy per epoch and per seed, then
per seed its minimum over the last 3 epochs (the figure compared in docs/history.md) and the
score a search ranks on (its mean over the last 3 epochs, `FitResult.val_score`), each averaged
over the seeds. Never the test set: that is `verify`'s, after the choice.

    python benchmarks/recipe_check.py EXPERIMENT [--set FIELD=VALUE ...] [--spec FIELD=VALUE ...]
        [--seeds 0,1,2] [--threads 1] [--silu] [--bn-first] [--shortcuts] [--out FOLDER]
        [--data-dir ../shared/datasets/mnist]

`--set` overrides a recipe field, `--spec` a field of the network's spec (`--spec pool=blur`).

`--silu` is a probe, not a model option: it swaps every ReLU of the built pack for SiLU (the
spec has no activation field; this measured whether it should — docs/history.md: it should not, so far). `--bn-first` is a probe too: every
ReLU → BatchNorm pair becomes BatchNorm → ReLU (the spec fixes conv → ReLU → BatchNorm).
`--shortcuts` is a third: every depthwise-separable block gets a parameter-free identity
shortcut (PyramidNet's, zero-padded where the block widens, cropped to its unpadded output).

`--out` writes seed 0's network as a teacher folder (spec.yaml, state_dict.pt, experiment.yaml
with this run's val_size): a teacher for searches on the same split (`recipe.teacher`).
Two of these side by side on 2 cores (1 thread each) take ~10 min for a 7,520-param net.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from mnist_search.core.config import ArchSpec, ConfigError, Recipe, experiment_to_yaml, load_experiment
from mnist_search.core.data import load_mnist
from mnist_search.speed.layout import pack_seeds
from mnist_search.training.teacher import check_teacher
from mnist_search.training.train import fit_replicas
from mnist_search.workflows.export import export_model
from mnist_search.workflows.runtime import configure_threads

LAST = 3  # the epochs a run is judged on (target: each of the last 3)


def swap_relu(net: nn.Module, activation: type[nn.Module]) -> int:
    """Replace every nn.ReLU in `net` by `activation(inplace=True)`; how many were replaced."""
    swapped = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, activation(inplace=True))
                swapped += 1
    return swapped


def batchnorm_first(net: nn.Module) -> int:
    """Swap every ReLU directly followed by a BatchNorm in `net`'s Sequentials; how many were swapped."""
    swapped = 0
    for module in list(net.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.ReLU) and isinstance(module[i + 1], nn.modules.batchnorm._BatchNorm):
                module[i], module[i + 1] = module[i + 1], module[i]
                swapped += 1
    return swapped


class Shortcut(nn.Module):
    """`block(x)` plus a parameter-free shortcut from its input (PyramidNet's zero-padded
    identity): `x` cropped to the block's output size (centre), per replica its first
    min(C_in, C_out) channels added to the output's first ones. Replica i owns channels
    [i*C, (i+1)*C) on both sides, so packing stays exact."""

    def __init__(self, block: nn.Sequential, replicas: int):
        super().__init__()
        self.block, self.replicas = block, replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        k, crop = self.replicas, (x.shape[-1] - y.shape[-1]) // 2
        if crop:
            x = x[..., crop:-crop, crop:-crop]
        c_in, c_out = x.shape[1] // k, y.shape[1] // k
        shared = min(c_in, c_out)
        x = x.unflatten(1, (k, c_in))[:, :, :shared]
        y = y.unflatten(1, (k, c_out)).clone()
        y[:, :, :shared] += x
        return y.flatten(1, 2).contiguous(memory_format=torch.channels_last)


def shortcuts(net: nn.Module) -> int:
    """Wrap every depthwise-separable block of `net`'s packs (depthwise conv, 1x1 conv, ReLU,
    BatchNorm[, dropout]) in a Shortcut; how many were wrapped."""
    packs = net.nets if hasattr(net, "nets") else [net]
    wrapped = 0
    for pack in packs:
        layers, out, i = list(pack.layers), [], 0
        while i < len(layers):
            m = layers[i]
            if (
                isinstance(m, nn.Conv2d)
                and m.groups == m.in_channels > pack.replicas
                and m.kernel_size == (3, 3)
            ):
                j = i + 2  # the 1x1 conv, then ReLU, BatchNorm and any dropout up to the next conv/pool
                while j < len(layers) and not isinstance(layers[j], (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                    j += 1
                out.append(Shortcut(nn.Sequential(*layers[i:j]), pack.replicas))
                wrapped += 1
                i = j
            else:
                out.append(m)
                i += 1
        pack.layers = nn.Sequential(*out)
    return wrapped


def field_values(pairs: list[str]) -> dict:
    """`--set` / `--spec` arguments, FIELD=VALUE each, as {field: the value read as YAML}."""
    return {k: yaml.safe_load(v) for k, v in (pair.split("=", 1) for pair in pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="an experiment with a `spec` (e.g. a verify --out experiment.yaml)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field"
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val-size", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None, help="write seed 0's network here as a teacher")
    ap.add_argument("--silu", action="store_true", help="probe: every ReLU replaced by SiLU")
    ap.add_argument("--bn-first", action="store_true", help="probe: BatchNorm before each ReLU")
    ap.add_argument(
        "--spec", action="append", default=[], metavar="FIELD=VALUE", help="override a spec field"
    )
    ap.add_argument("--shortcuts", action="store_true", help="probe: zero-padded identity shortcuts")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    probes = [name for name in ("silu", "bn_first", "shortcuts") if getattr(a, name)]
    if probes and a.out is not None:
        ap.error("a probe builds a network no spec describes; it cannot be written with --out")
    configure_threads(a.threads)
    exp = load_experiment(a.experiment)
    overrides, spec_overrides = field_values(a.set), field_values(a.spec)
    spec = ArchSpec.model_validate(exp.spec.model_dump() | spec_overrides)
    seeds = [int(s) for s in a.seeds.split(",")]
    recipe = Recipe.model_validate(
        exp.recipe.model_dump() | {"val_size": a.val_size, "seeds": len(seeds)} | overrides
    )
    try:
        check_teacher(recipe)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    data = load_mnist(a.data_dir, val_size=recipe.val_size)
    device = torch.device("cpu")
    net = pack_seeds(spec, seeds, recipe, device)
    if a.silu:
        swap_relu(net, nn.SiLU)
    if a.bn_first and not batchnorm_first(net):
        raise SystemExit("error: --bn-first: this network has no ReLU followed by a BatchNorm")
    if a.shortcuts and not shortcuts(net):
        raise SystemExit("error: --shortcuts: this network has no depthwise-separable block")
    print(
        f"{a.experiment} {overrides | spec_overrides or '(as written)'}, probes {probes or 'none'}, "
        f"{net.layout} layout, seeds {seeds}, "
        f"{a.threads} thread(s)",
        flush=True,
    )
    start = time.perf_counter()

    def on_epoch(results) -> None:
        accs = " ".join(f"{r.val_acc:.4f}" for r in results)
        print(f"epoch {results[0].epoch:>2}  val {accs}  {time.perf_counter() - start:.0f} s", flush=True)

    results = fit_replicas(net, data, recipe, device, on_epoch, seeds=seeds)
    worst = [min(r.last(LAST, "val_acc")) for r in results]
    print(
        f"val, min of the last {LAST} epochs per seed: {' / '.join(f'{v:.4f}' for v in worst)}; "
        f"mean {statistics.fmean(worst):.4f}; search score (mean of the last {LAST}) "
        f"{statistics.fmean(r.val_score for r in results):.4f}"
    )
    if a.out is not None:
        model = net.replica(0)
        export_model(model, a.out)
        (a.out / "experiment.yaml").write_text(
            experiment_to_yaml(spec, recipe.model_copy(update={"seeds": 1}))
        )
        print(f"seed {seeds[0]}'s network written to {a.out} (trained with val_size {recipe.val_size})")


if __name__ == "__main__":
    main()
