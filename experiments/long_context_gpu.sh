#!/usr/bin/env bash
# experiments/long_context.py on one CUDA GPU, one stage per command, everything written to $OUT.
#   bash experiments/long_context_gpu.sh STAGE [HYDRA OVERRIDES...]
# STAGE: accuracy (gradient selection first if its file is absent, then paired accuracy) | structure | ttft.
# Needs: the GGUF at $SPARSEATTN_QWEN_GGUF (default /tmp/gpu/qwen.gguf, assembled from chunks carried in), carry [".whl", ".gpu/text"] (stage.sh,
# scripts/stage_text.sh). A stage stops itself at BUDGET_S seconds (default 500, under the 600 s call
# limit) and writes its report; the same command again resumes from the records in $OUT, which the
# next call must carry back in (copy $OUT's files to OUT_SEED, e.g. carry ["results_seed"] and OUT_SEED=results_seed).
set -euo pipefail
stage=${1:?accuracy, structure or ttft}; shift
: "${OUT:?set OUT to the output folder}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export SPARSEATTN_QWEN_GGUF=${SPARSEATTN_QWEN_GGUF:-/tmp/gpu/qwen.gguf}
export SPARSEATTN_TEXT_DIR=${SPARSEATTN_TEXT_DIR:-$PWD/.gpu/text}
mkdir -p "$OUT"
if [ -n "${OUT_SEED:-}" ]; then cp -n "$OUT_SEED"/* "$OUT"/ 2>/dev/null || true; fi
case $stage in
  accuracy) parts='[selection,accuracy]' ;;
  structure) parts='[structure]' ;;
  ttft) parts='[ttft]' ;;
  *) echo "stage: expected accuracy, structure or ttft, got $stage" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 experiments/long_context.py "parts=$parts" out_dir="$OUT" budget_s="${BUDGET_S:-500}" \
  model.load.device=cuda threads=8 "$@" 2>&1 | tail -c 6000
