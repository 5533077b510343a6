"""MNIST from its IDX files: counts, the fixed split, and errors that name the bad file."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from mnist_search.core.data import DataError, load_mnist, load_raw


def test_real_mnist_loads_with_the_official_counts(data_dir):
    raw = load_raw(data_dir)
    assert raw["train_images"].shape == (60_000, 28, 28)
    assert raw["test_images"].shape == (10_000, 28, 28)
    # The official label histogram of the training set (dataset README).
    counts = torch.bincount(torch.from_numpy(raw["train_labels"].astype("int64")), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_validation_split_is_fixed_disjoint_and_normalised(mnist, data_dir):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (50_000, 10_000, 10_000)
    again = load_mnist(data_dir, limit_train=1_000)
    assert torch.equal(again.val.y, mnist.val.y)  # same seeded split every time
    assert torch.equal(again.train.x, mnist.train.x[:1_000])
    assert abs(mnist.train.x.mean().item()) < 0.05 and abs(mnist.train.x.std().item() - 1) < 0.05
    # Disjoint and complete: together the two splits are exactly the 60k training images.
    train_keys = {x.numpy().tobytes() for x in mnist.train.x}
    val_keys = {x.numpy().tobytes() for x in mnist.val.x}
    assert not train_keys & val_keys
    all_labels = torch.cat([mnist.train.y, mnist.val.y]).bincount(minlength=10)
    assert all_labels.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def copy_raw(data_dir, tmp_path):
    target = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_dir / "MNIST" / "raw", target)
    for f in target.iterdir():
        f.chmod(0o644)
    return target


def test_truncated_file_is_named(data_dir, tmp_path):
    raw = copy_raw(data_dir, tmp_path)
    path = raw / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as fh:
        blob = fh.read()
    with gzip.open(path, "wb") as fh:
        fh.write(blob[:5000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*(truncated|expected)"):
        load_raw(tmp_path)


def test_wrong_magic_number_is_named(data_dir, tmp_path):
    raw = copy_raw(data_dir, tmp_path)
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    with gzip.open(raw / "train-images-idx3-ubyte.gz") as src:
        images = src.read()
    (raw / "train-labels-idx1-ubyte").write_bytes(images[:16])  # an image header, not labels
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: wrong magic number 2051"):
        load_raw(tmp_path)


def test_missing_files_offline_say_where_they_were_expected(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*MNIST/raw and the download failed"):
        load_raw(tmp_path / "empty")
