#!/usr/bin/env bash
# The CUDA checks of issue 13 as one prepared run on a lent GPU machine (its Python has torch with
# CUDA; the rest travels as wheels in ./.whl, see the device tool's README), from the repo root:
#   TEST_S=80 BENCH_S=190 bash scripts/device-check.sh      (results under $OUT when set)
# Runs the CUDA tests (vectorised training, CUDA graphs, DP-SGD on CUDA), then scripts/bench_gpu.py.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/device-check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, flwr, opacus; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout "${TEST_S:-100}" python3 -m pytest -q -p no:cacheprovider tests/test_vectorized.py tests/test_cuda_graphs.py \
    tests/privacy/test_dp_sgd.py -k cuda 2>&1 | tee "$OUT/pytest.log"
timeout "${BENCH_S:-170}" python3 scripts/bench_gpu.py "$@" 2>&1 | tee "$OUT/bench.log"
