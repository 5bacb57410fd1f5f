#!/usr/bin/env bash
# The TTFT sweep behind experiments/results/ttft_h200.*: Hydra multiruns over schedules x lengths for the
# Llama-3.1-8B and Qwen2.5-7B shapes (random bf16 weights), then one report. Each multirun runs its jobs
# in one process (Hydra's basic launcher) so the model is built once; conf/ttft.yaml shows how to hand
# jobs to the joblib or SLURM launchers instead. A failed multirun does not stop the others: the report
# gathers whatever finished.
# Usage, from the project root on a GPU machine:  bash experiments/ttft_sweep.sh [OUT_PREFIX] [SWEEP_DIR] [targets]
# With `targets`, only the rows the TTFT targets are stated for: the Llama shape at 32K and 128K, dense
# against TriangleMix and TriangleMix + MInference (a few minutes instead of the whole sweep).
set -uo pipefail
out=${1:-experiments/results/ttft_h200}
sweep=${2:-multirun/ttft/h200}
scope=${3:-all}
# One timed prefill per job after a full-length warm-up (the committed ttft_h200 run used warmup_length=4096,
# see its notes): a multi-second prefill varies by well under 1% run to run.
common=(repeats=1 hydra/job_logging=disabled)
ttft() { python3 experiments/ttft.py -m "${common[@]}" "$@"; }
if [ "$scope" = targets ]; then
  ttft model=llama31_8b length=32768,131072 schedule=dense,trianglemix,trianglemix_minference \
    hydra.sweep.dir="$sweep/llama"
  python3 experiments/report.py "$sweep" --out "$out"
  exit
fi
ttft model=llama31_8b length=32768,65536,131072 schedule=dense,trianglemix,trianglemix_minference \
  hydra.sweep.dir="$sweep/llama"
# Controls at 128K, and dense attention through our kernel (causal layers not handed to cuDNN).
ttft model=llama31_8b length=131072 schedule=triangle,streaming_all,minference,dense causal_backend=sparse \
  hydra.sweep.dir="$sweep/llama_controls"
ttft model=qwen25_7b length=32768,131072 schedule=dense,trianglemix hydra.sweep.dir="$sweep/qwen"
python3 experiments/report.py "$sweep" --out "$out"
