#!/bin/bash
# GPU checks, run on a lent device machine (see the device tool): carry .whl/ (wheels of mlflow, optuna,
# pydantic, typer, rich, psutil, plotly, filelock, pytest for Python 3.12 that the device lacks) and .gpu/mnist/
# (MNIST/raw/*.gz), e.g. run(command="bash tests/device/check.sh", carry=[".whl", ".gpu"]).
set -x
pip install -q --no-deps --target /tmp/site .whl/*.whl > /tmp/pip.log 2>&1 || tail -5 /tmp/pip.log
export PYTHONPATH=/tmp/site:$PWD MNIST_SEARCH_DATA_DIR=$PWD/.gpu/mnist MLFLOW_DISABLE_TELEMETRY=true MNIST_SEARCH_STORE=/tmp/store
python3 -m mnist_search study --experiment budget-8k --trials 2 --epochs 1 --limit-train 10000 --device cuda --quiet 2>&1 | tail -4
python3 -m mnist_search verify --top 1 --seeds 1 --epochs 1 --limit-train 10000 --device cuda 2>&1 | tail -3
python3 - <<'PY'
import mlflow, numpy as np, torch
from mnist_search.core.data import load_raw
mlflow.set_tracking_uri("sqlite:////tmp/store/mlflow.db")
c = mlflow.MlflowClient()
raw = load_raw(None)
x = raw["test_images"][:, None].astype(np.float32) / 255.0; y = raw["test_labels"]
for alias in ("best", "champion"):
    v = c.get_model_version_by_alias("mnist-search-b8000", alias)
    logged = c.get_run(v.run_id).data.metrics["final/test_acc"]
    try:
        m = mlflow.pyfunc.load_model(f"models:/mnist-search-b8000@{alias}")
        acc = float((np.concatenate([m.predict(x[i:i+2000]) for i in range(0, len(x), 2000)]).argmax(1) == y).mean())
        print(f"GPU-CHECK {alias}: version {v.version} loaded on a CUDA machine, raw-pixel accuracy {acc:.4f}, logged {logged:.4f}")
    except Exception as e:
        print(f"GPU-CHECK {alias}: FAILED to load/predict: {type(e).__name__}: {str(e)[:300]}")
PY
python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_gpu.py 2>&1 | tail -3
