#!/bin/bash
# Packed replicas on a lent GPU (see the device tool): carry .whl/ (pydantic and its needs for
# Python 3.12, which the device image lacks) and .gpu/mnist/ (MNIST/raw/*.gz), e.g.
#   run(command="bash tests/device/packed.sh", carry=[".whl", ".gpu"], timeout_s=540)
# 1. replica k of a packed run on CUDA against a run alone with seed k (float64, 14 steps);
# 2. a compiled pack against the eager one on CUDA (tests/device/compiled_check.py);
# 3. benchmarks/replica_speed.py on CUDA, K up to 64, eager, then compiled (one graph, dropout drawn
#    outside it: mnist_search/speed/compiled.py) for K = 1, 8, 64.
set -x
pip install -q --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 || tail -5 /tmp/pip.log
export PYTHONPATH=/tmp/site:$PWD MNIST_SEARCH_DATA_DIR=$PWD/.gpu/mnist PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 - <<'PY'
import torch
from mnist_search.core.config import ArchSpec, Recipe
from mnist_search.core.data import MNISTData, Split, load_mnist
from mnist_search.core.model import build_model
from mnist_search.speed.packed import pack, unpack
from mnist_search.training.train import fit, fit_replicas

cuda = torch.device("cuda")
spec = ArchSpec(stages=[[6, 8], [8, 10]], transitions=[6], batchnorm=True, dropout=0.1, head="conv")
d = load_mnist(None, val_size=1000, limit_train=5000)
def split(s, n):
    return Split(s.x[:n].double(), s.y[:n])
data = MNISTData(split(d.train, 448), split(d.val, 500), split(d.test, 500)).to(cuda)
recipe = Recipe(epochs=2, batch_size=64, rotation=8, translate=0.05, precise_bn=256, lr=0.05)
seeds = [4, 11, 7]
net = pack([build_model(spec, seed=s).double() for s in seeds])
packed = fit_replicas(net, data, recipe, cuda, seeds=seeds)
for k, s in enumerate(seeds):
    m = build_model(spec, seed=s).double()
    alone = fit(m, data, recipe, cuda, seed=s)
    diff = max((unpack(net, k).state_dict()[key] - v.cpu()).abs().max().item() for key, v in m.state_dict().items())
    print(f"GPU-CHECK seed {s}: packed vs alone max weight diff {diff:.2e}; "
          f"val acc {packed[k].epochs[-1].val_acc:.4f} vs {alone.epochs[-1].val_acc:.4f}")
PY
python3 tests/device/compiled_check.py --device cuda 2>&1 | grep -v "^W1"
python3 benchmarks/replica_speed.py --device cuda --ks 1,2,4,8,16,32,64 --no-compile
python3 benchmarks/replica_speed.py --device cuda --ks 1,8,64 --repeats 2 2>&1 | grep -v "^W1"
