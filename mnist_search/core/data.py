"""MNIST, read once from its IDX files into normalised tensors, split into train/val/test.

The files live in torchvision's layout, `<data_dir>/MNIST/raw/*-ubyte[.gz]`. They are read
directly (no PIL, no per-sample transforms); torchvision's downloader is used only when they are
absent. Every file is checked (magic number, counts, shape, label range) and a bad one is named.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_search.core.errors import DataError

# The canonical MNIST mean and standard deviation of pixel values in [0, 1].
MEAN, STD = 0.1307, 0.3081

FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, 60_000),
    "train_labels": ("train-labels-idx1-ubyte", 2049, 60_000),
    "test_images": ("t10k-images-idx3-ubyte", 2051, 10_000),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, 10_000),
}
SPLIT_SEED = 20_240_101  # fixed: the validation split never changes between runs or trials


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """`--data-dir`, else `MNIST_SEARCH_DATA_DIR`, else `./data`."""
    return Path(data_dir or os.environ.get("MNIST_SEARCH_DATA_DIR") or "data")


def _find(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """One IDX file as a uint8 array, checked against the expected magic number and count."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            blob = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if len(blob) < 8:
        raise DataError(f"{path}: truncated (only {len(blob)} bytes)")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found} (expected {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] != count or (ndim == 3 and dims[1:] != [28, 28]):
        raise DataError(f"{path}: shape {dims} (expected {[count] + [28, 28][: ndim - 1]})")
    expected = header + int(np.prod(dims))
    if len(blob) != expected:
        raise DataError(f"{path}: {len(blob)} bytes, expected {expected} (truncated or corrupt)")
    array = np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)
    if ndim == 1 and array.max() > 9:
        raise DataError(f"{path}: label {int(array.max())} outside 0-9")
    return array


def _writable_ancestor(path: Path) -> tuple[Path, bool]:
    """The nearest folder at or above `path` that exists, and whether we may write there
    (False on a read-only mount, too)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, os.access(path, os.W_OK)


def _download(data_dir: Path, raw: Path, missing: list[str]) -> None:
    folder, writable = _writable_ancestor(raw)
    if not writable:
        raise DataError(
            f"MNIST files {', '.join(missing)} not found in {raw}, and they cannot be downloaded "
            f"there: {folder} is read-only; put the IDX files (.gz or raw) there, or mount or point "
            "--data-dir / MNIST_SEARCH_DATA_DIR at a writable folder"
        )
    new = raw.absolute()  # the highest folder the download creates: removed again if it fails
    while not new.parent.exists():
        new = new.parent
    try:
        from torchvision.datasets import MNIST

        MNIST(str(data_dir), train=True, download=True)
        MNIST(str(data_dir), train=False, download=True)
    except Exception:  # noqa: BLE001 - any network/integrity failure means: offline, tell the user what to do
        if new != folder:  # nothing half-made left behind (an empty DIR/MNIST/raw, a partial file)
            shutil.rmtree(new, ignore_errors=True)
        raise DataError(
            f"MNIST files {', '.join(missing)} not found in {raw} and the download failed; "
            "put the IDX files (.gz or raw) there, or point --data-dir / MNIST_SEARCH_DATA_DIR "
            "at the folder that holds MNIST/raw/"
        ) from None


def load_raw(data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The four MNIST arrays, downloading them first if (and only if) they are absent."""
    return _load_files(data_dir)[0]


def _load_files(data_dir: str | Path | None) -> tuple[dict[str, np.ndarray], Source]:
    data_dir = resolve_data_dir(data_dir)
    raw = data_dir / "MNIST" / "raw"
    missing = [stem for stem, _, _ in FILES.values() if _find(raw, stem) is None]
    if missing:
        _download(data_dir, raw, missing)
    arrays, digest = {}, hashlib.sha256()
    for key, (stem, magic, count) in FILES.items():
        path = _find(raw, stem)
        if path is None:
            raise DataError(f"{raw / stem}[.gz]: not found after download")
        arrays[key] = read_idx(path, magic, count)
        digest.update(arrays[key].tobytes())  # the decoded contents: .gz or not, the same digest
    return arrays, Source(str(raw.resolve()), digest.hexdigest()[:16])


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or float pixels in [0, 1] -> normalised float32 (N, 1, 28, 28)."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return (images - MEAN) / STD


@dataclass
class Split:
    x: torch.Tensor  # (N, 1, 28, 28) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Source:
    """Where the images came from: the folder and a digest of the four IDX files' decoded contents."""

    folder: str
    digest: str


@dataclass
class MNISTData:
    train: Split
    val: Split  # held out of the 60k training images; the only set that steers decisions
    test: Split  # the official 10k; measured and logged, never used to choose
    source: Source | None = None

    def to(self, device: torch.device | str) -> MNISTData:
        return MNISTData(self.train.to(device), self.val.to(device), self.test.to(device), self.source)

    def example(self, n: int = 4) -> torch.Tensor:
        """The first `n` test digits as raw pixels in [0, 1], (n, 1, 28, 28): a model's input example."""
        return (self.test.x[:n].cpu() * STD + MEAN).clamp_(0.0, 1.0)


def load_mnist(
    data_dir: str | Path | None = None, val_size: int = 10_000, limit_train: int | None = None
) -> MNISTData:
    """MNIST in memory. The validation split is a fixed seeded draw from the 60k training images;
    `limit_train` then keeps the first N of the remaining training images (for smoke runs)."""
    raw, source = _load_files(data_dir)
    x = torch.from_numpy(raw["train_images"].copy())
    y = torch.from_numpy(raw["train_labels"].astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:].sort().values
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    if len(train_idx) < 2:  # BatchNorm cannot train on a single image
        raise DataError(
            f"{len(train_idx)} training image(s) left (val_size {val_size}, limit_train {limit_train}); need 2 or more"
        )
    test_x = torch.from_numpy(raw["test_images"].copy())
    test_y = torch.from_numpy(raw["test_labels"].astype(np.int64))
    return MNISTData(
        train=Split(normalise(x[train_idx]), y[train_idx]),
        val=Split(normalise(x[val_idx]), y[val_idx]),
        test=Split(normalise(test_x), test_y),
        source=source,
    )
