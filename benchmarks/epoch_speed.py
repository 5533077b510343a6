"""One training epoch of seed model 2: the seed documents' pipeline vs mnist-search's trainer.

(a) seed path: torchvision.datasets.MNIST with ToTensor()+Normalize, DataLoader(batch_size=64,
    shuffle=True), torch's nn.Dropout and nn.ReLU, a per-batch Python loop, then a pass over the test set.
(b) mnist-search: `fit()` for one epoch on the same 60,000 images (val_size 0) with the seed recipe
    (batch 128), data in memory, batched everything, then val/test evaluation.
Both run in this process on this machine; prints both times and the ratio (a)/(b). With
`--precision fp32,bf16`, (b) runs once per recipe precision (bf16: autocast, see Recipe.precision),
each with its own ratio; repeats interleave every path so that a slow moment hits them all.

    python benchmarks/epoch_speed.py [--data-dir ../shared/datasets/mnist] [--repeats 1] [--precision fp32,bf16]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnist_search.core.config import load_experiment
from mnist_search.core.data import MEAN, STD, load_mnist, resolve_data_dir
from mnist_search.core.model import build_model, layer_plan
from mnist_search.training.train import fit
from mnist_search.workflows.runtime import configure_threads

SPEC_FILE = Path(__file__).resolve().parent.parent / "experiments" / "seed-model-2.yaml"


def seed_style_model(spec) -> nn.Module:
    """The same layers, but with torch's own nn.Dropout and nn.ReLU(), as the seed code had."""
    model = build_model(spec)
    for i, layer in enumerate(layer_plan(spec)):
        if layer.kind == "Dropout":
            model.layers[i] = nn.Dropout(layer.p)
        elif layer.kind == "ReLU":
            model.layers[i] = nn.ReLU()
    return model


def seed_epoch(spec, raw_root: Path) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train = datasets.MNIST(str(raw_root), train=True, download=False, transform=tf)
    test = datasets.MNIST(str(raw_root), train=False, download=False, transform=tf)
    train_loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=64, shuffle=False)
    torch.manual_seed(0)
    model = seed_style_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    model.train()
    for x, y in train_loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    return time.perf_counter() - start


def project_epoch(spec, recipe, data_dir: Path, precision: str = "fp32") -> float:
    data = load_mnist(data_dir, val_size=0)  # all 60k, as the seed trains on
    model = build_model(spec)
    recipe = type(recipe).model_validate({**recipe.model_dump(), "epochs": 1, "precision": precision})
    result = fit(model, data, recipe, torch.device("cpu"), seed=0)
    return result.epochs[0].epoch_seconds


def unpack_for_torchvision(data_dir: Path, into: Path) -> Path:
    """torchvision.datasets.MNIST(download=False) wants uncompressed files it can find."""
    raw = into / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (data_dir / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    args = ap.parse_args()
    precisions = [p.strip() for p in args.precision.split(",")]
    threads = configure_threads()
    exp = load_experiment(SPEC_FILE)
    data_dir = resolve_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_for_torchvision(data_dir, Path(tmp))
        seed_times, ours = [], {p: [] for p in precisions}
        for _ in range(args.repeats):
            seed_times.append(seed_epoch(exp.spec, root))
            for precision in precisions:
                ours[precision].append(project_epoch(exp.spec, exp.recipe, data_dir, precision))
    a = min(seed_times)
    print(f"torch {torch.__version__}, {threads} threads, seed model 2 ({SPEC_FILE.name})")
    print(f"(a) seed path, DataLoader batch 64, train + test : {a:7.1f} s/epoch")
    for precision, times in ours.items():
        b = min(times)
        print(
            f"(b) mnist-search fit, batch {exp.recipe.batch_size}, {precision}, train + val + test: {b:7.1f} s/epoch"
        )
    for precision, times in ours.items():
        print(f"speed-up (a)/(b) {precision}: {a / min(times):.2f}x")


if __name__ == "__main__":
    main()
