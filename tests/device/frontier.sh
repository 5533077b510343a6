#!/bin/bash
# Issue 17's searches on a lent GPU (see the device tool), all studies side by side; carry .whl/
# (pydantic, optuna and their needs for Python 3.12, which the device image lacks) and .gpu/mnist/
# (MNIST/raw/*.gz), e.g.
#   run(command="bash tests/device/frontier.sh 8.2", carry=[".whl", ".gpu"], timeout_s=570)
# $1: minutes of search; $STUDIES: experiment:budget:workers ... (default below: all four
# budgets), e.g. STUDIES="budget-1k-separable:1000:6 budget-3k:3000:5 budget-5k:5000:4". Fewer
# studies at a time give each more trials in a window. The journal comes back as $OUT/frontier.journal; verify it here with
#   mnist-search verify --storage frontier.journal --study budget-1k-b1000 --top 1 --seeds 3 ...
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD MNIST_SEARCH_DATA_DIR=$PWD/.gpu/mnist PYTHONUNBUFFERED=1
# A journal carried in .gpu/ resumes those studies (their trials so far guide the sampler).
[ -f .gpu/frontier.journal ] && cp .gpu/frontier.journal "$OUT/frontier.journal"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 60 &
STUDIES=${STUDIES:-"budget-1k:1000:4 budget-2k:2000:4 budget-3k:3000:4 budget-5k:5000:3"}
args=()
for s in $STUDIES; do args+=(--study "$s"); done
python3 tests/device/frontier_search.py --journal "$OUT/frontier.journal" --minutes "${1:-8}" "${args[@]}" \
    2>&1 | tee "$OUT/search.log"
kill %1 2>/dev/null
