#!/usr/bin/env bash
# One GPU call that checks and measures a commit: the whole GPU test suite, then the kernel benchmark
# (with FlexAttention as written and the authors' kernels when .peers/ is staged), the paged-KV and the
# backward benchmarks, each capped in time so that the call ends inside the device's 10-minute limit and
# returns what finished. Everything lands in $OUT (at most 8 files).
#   OUT=<folder> bash experiments/gpu_checks.sh
# Carry [".whl", ".peers"]: Hydra, pytest-xdist and the MInference kernels (experiments/stage_peers.sh).
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu_checks.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu_checks.log"
# The tests compile many kernels (CPU-bound); four workers share the one GPU.
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4" || echo "")
# One line per failure, without captured logs: a failure's reason must survive the tail below.
timeout "${TESTS_S:-240}" python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider $workers -rfEs --tb=line \
  --show-capture=no 2>&1 \
  | tail -n 40 | tee -a "$OUT/gpu_checks.log"
timeout "${BENCH_S:-200}" python3 experiments/bench_kernel.py out_dir="$OUT" 'lengths=[8192,32768,131072]' \
  'long_lengths=[]' dynamic_length=0 2>&1 | tail -n 30 | tee -a "$OUT/gpu_checks.log"
timeout "${PAGED_S:-45}" python3 experiments/bench_paged_kv.py --out "$OUT" --lengths 32768 2>&1 | tail -n 12 \
  | tee -a "$OUT/gpu_checks.log"
timeout "${BACKWARD_S:-90}" python3 experiments/bench_backward.py --out "$OUT" --lengths 32768 131072 \
  --patterns causal triangle --check-len 2048 2>&1 | tail -n 16 | tee -a "$OUT/gpu_checks.log"
