#!/usr/bin/env bash
# The TTFT sweep behind experiments/results/ttft_h200.*: Hydra multiruns over schedules x lengths for the
# Llama-3.1-8B and Qwen2.5-7B shapes (random bf16 weights), then one report. Each multirun runs its jobs
# in one process (Hydra's basic launcher) so the model is built once; conf/ttft.yaml shows how to hand
# jobs to the joblib or SLURM launchers instead.
# Usage, from the project root on a GPU machine:  bash experiments/ttft_sweep.sh [OUT_PREFIX] [SWEEP_DIR]
set -euo pipefail
out=${1:-experiments/results/ttft_h200}
sweep=${2:-multirun/ttft/h200}
lengths=32768,65536,131072
# One timed prefill per job after a 4K warm-up: a multi-second prefill varies by well under 1% run to run.
common=(repeats=1 hydra/job_logging=disabled)
python3 experiments/ttft.py -m model=llama31_8b length=$lengths "${common[@]}" hydra.sweep.dir="$sweep/llama" \
  schedule=dense,trianglemix,trianglemix_minference,minference,triangle,streaming_all
# The dense check through our kernel (causal layers not handed to cuDNN).
python3 experiments/ttft.py -m model=llama31_8b length=32768,131072 "${common[@]}" hydra.sweep.dir="$sweep/llama_kernel" \
  schedule=dense causal_backend=sparse
python3 experiments/ttft.py -m model=qwen25_7b length=$lengths "${common[@]}" hydra.sweep.dir="$sweep/qwen" \
  schedule=dense,trianglemix,trianglemix_minference
python3 experiments/report.py "$sweep" --out "$out"
