#!/usr/bin/env bash
# One GPU call that checks and measures a commit: the whole GPU test suite, then the kernel benchmark
# (with FlexAttention as written and the authors' kernels when .peers/ is staged), the paged-KV, the
# backward and the dynamic benchmarks, each capped in time so that the call ends inside the device's
# 10-minute limit and returns what finished. Everything lands in $OUT (11 files when every step runs).
#   OUT=<folder> [TESTS_S=240 BENCH_S=200 PAGED_S=45 BACKWARD_S=90 DYNAMIC_S=0] bash experiments/gpu_checks.sh
# A step's cap of 0 skips it (timeout(1) would read 0 as "no limit"). The kernel benchmark's lengths come
# from BENCH_LENGTHS (default "8192,32768,131072"); the backward benchmark's lengths and patterns from
# BACKWARD_LENGTHS (default "32768 131072") and BACKWARD_PATTERNS (default "causal triangle"); the dynamic
# benchmark (with MInference's vertical-slash kernel when .peers/ is staged) runs at 128K. ESTIMATION_S (default
# 0) caps each of two estimation steps at 8K, 32K and 128K: the line-sums kernel against the torch path it
# replaced, then estimate + lowering against the dense layer (profile_estimation.py). TUNE_S (default 0) caps
# tune_backward.py on causal attention at 32K (its first passes: the one-loop and key-major dK/dV shapes).
# TEST_PATHS (default tests/gpu) narrows the test step to some files when a call has little time;
# BENCH_ONLY (a comma list of bench_kernel's pattern names, default all) narrows the kernel benchmark.
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
# step CAP_SECONDS LINES COMMAND...: run COMMAND within CAP_SECONDS, keep its last LINES lines in the log.
step() {
  local cap=$1 lines=$2; shift 2
  [ "$cap" -gt 0 ] || { echo "skipped (cap 0): $*" | tee -a "$OUT/gpu_checks.log"; return; }
  timeout "$cap" "$@" 2>&1 | tail -n "$lines" | tee -a "$OUT/gpu_checks.log"
}
# One line per failure, without captured logs: a failure's reason must survive the tail below.
# shellcheck disable=SC2086  # $workers is empty or two words, TEST_PATHS a word list
step "${TESTS_S:-240}" 40 python3 -m pytest -m gpu ${TEST_PATHS:-tests/gpu} -q -p no:cacheprovider $workers -rfEs --tb=line \
  --show-capture=no
step "${BENCH_S:-200}" 30 python3 experiments/bench_kernel.py out_dir="$OUT" "lengths=[${BENCH_LENGTHS:-8192,32768,131072}]" \
  'long_lengths=[]' dynamic_length=0 "only=[${BENCH_ONLY:-}]"
step "${PAGED_S:-45}" 12 python3 experiments/bench_paged_kv.py --out "$OUT" --lengths 32768
# shellcheck disable=SC2086  # word lists by design
step "${BACKWARD_S:-90}" 24 python3 experiments/bench_backward.py --out "$OUT" --lengths ${BACKWARD_LENGTHS:-32768 131072} \
  --patterns ${BACKWARD_PATTERNS:-causal triangle} --check-len 2048
step "${DYNAMIC_S:-0}" 30 python3 experiments/bench_dynamic.py --out "$OUT"
step "${ESTIMATION_S:-0}" 20 env PYTHONPATH="experiments:${PYTHONPATH:-$PWD}" python3 \
  experiments/investigations/fused_estimation.py --stages line_sums --lengths 8192 32768 131072 --name line_sums --out "$OUT"
step "${ESTIMATION_S:-0}" 20 python3 experiments/profile_estimation.py --lengths 8192 32768 131072 --out "$OUT"
step "${TUNE_S:-0}" 30 python3 experiments/tune_backward.py --out "$OUT" --length 32768 --patterns causal \
  --budget-s "$(( ${TUNE_S:-0} - 20 ))"
