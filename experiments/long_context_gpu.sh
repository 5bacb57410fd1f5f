#!/usr/bin/env bash
# experiments/long_context.py on one CUDA GPU, inside one device call.
#   bash experiments/long_context_gpu.sh STAGES [HYDRA OVERRIDES...]
# STAGES: a comma list of accuracy | structure | dynamic | ttft, run in the order given, each its own process, all
# inside one time box of BUDGET_S seconds (default 540, under the 600 s call limit); a stage stops between
# samples / layers / jobs when the box is spent and writes its report.
# accuracy first runs the gradient layer selection when its gradients are absent, capped at SELECTION_S
# seconds (default 200); past that cap the accuracy runs without the gradient split (its report says so).
# Records live in $STATE (default /tmp/long_context), which a warm machine keeps between calls, and come
# back in $OUT as long_context_state.tgz (unpack it into experiments/results/long_context) with the report;
# a state that does not exist yet starts from $SEED (default: the committed records,
# experiments/results/long_context), so every call resumes where the last one stopped.
# Needs: the GGUF at $SPARSEATTN_QWEN_GGUF (default /tmp/gpu/qwen.gguf, assembled from chunks carried in),
# carry [".whl", ".gpu/text"] (Hydra's wheels; scripts/stage_text.sh).
set -uo pipefail
stages=${1:?a comma list of accuracy, structure, dynamic, ttft}; shift
: "${OUT:?set OUT to the output folder}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export SPARSEATTN_QWEN_GGUF=${SPARSEATTN_QWEN_GGUF:-/tmp/gpu/qwen.gguf}
export SPARSEATTN_TEXT_DIR=${SPARSEATTN_TEXT_DIR:-$PWD/.gpu/text}
export STATE=${STATE:-/tmp/long_context}
state=$STATE
if [ ! -d "$state" ]; then
  mkdir -p "$state" && cp "${SEED:-experiments/results/long_context}"/* "$state"/ 2>/dev/null
fi
# The device returns at most 8 files: the records travel as one archive beside the readable report.
trap 'tar czf "$OUT/long_context_state.tgz" -C "$state" . && cp "$state"/*.md "$OUT"/' EXIT
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
left() { echo $(( deadline - $(date +%s) )); }
lc() { python3 experiments/long_context.py out_dir="$state" model.load.device=cuda threads=8 "$@" 2>&1 | tail -c 4000; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
for stage in ${stages//,/ }; do
  [ "$(left)" -gt 30 ] || { echo "$stage: no time left in the box"; continue; }
  case $stage in
    accuracy)
      if ! compgen -G "$state/*_gradients.json" > /dev/null; then
        cap=$(( $(left) < ${SELECTION_S:-200} ? $(left) : ${SELECTION_S:-200} ))
        timeout "$cap" python3 experiments/long_context.py out_dir="$state" model.load.device=cuda threads=8 \
          'parts=[selection]' "$@" 2>&1 | tail -c 2000
      fi
      split=false; compgen -G "$state/*_gradients.json" > /dev/null && split=true
      lc 'parts=[accuracy]' accuracy.gradient_split=$split budget_s="$(left)" "$@" ;;
    structure|dynamic|ttft) lc "parts=[$stage]" budget_s="$(left)" "$@" ;;
    *) echo "stage: expected accuracy, structure, dynamic or ttft, got $stage" >&2; exit 2 ;;
  esac
done
