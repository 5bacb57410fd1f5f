#!/usr/bin/env bash
# SmolLM2-135M-Instruct on one CUDA GPU, through the Triton kernel:
#   1. the Hugging Face GPU tests (SMOLLM2_GGUF set, so the real-weights tests run too); nothing else runs if they fail;
#   2. TriangleMix layer selection at 4K: gradients on 4K prompts, then gradient-selected vs deepest vs
#      shallowest vs two random draws at k = 5..30 triangle layers, 100 niah_single samples paired with
#      dense. Time-boxed: rows are appended per sample, so a stopped run resumes from OUT_DIR's JSON lines
#      (seeded from experiments/results/ when OUT_DIR has none), and the report is rendered at the end.
#
#   bash experiments/smollm2_gpu.sh GGUF OUT_DIR [SECONDS_FOR_THE_COMPARISON]
set -euo pipefail
gguf=${1:?path of the SmolLM2 GGUF}
out=${2:?output folder}
budget=${3:-420}
name=layer_selection_smollm2_4k_h200
mkdir -p "$out"
SMOLLM2_GGUF=$gguf python3 -m pytest -m gpu tests/gpu/test_hf_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -n 15
for f in "$name.jsonl" "${name}_gradients.json" "${name}_runs.json"; do
  [ -e "$out/$f" ] || [ ! -e "experiments/results/$f" ] || cp "experiments/results/$f" "$out/$f"
done
args=(model.gguf_path="$gguf" model.device=cuda backend=framework impl=triton threads=8
  gradient.length=4096 gradient.samples_per_task=10 'k_values=[5,10,15,20,25,30]' 'random_seeds=[0,1]'
  eval.samples=100 name=$name out_dir="$out")
status=0
timeout -s INT "$budget" python3 experiments/layer_selection.py "${args[@]}" > "$out/$name.log" 2>&1 || status=$?
tail -c 1500 "$out/$name.log"
python3 experiments/layer_selection.py "${args[@]}" report_only=true | tail -n 40
exit $(( status == 124 ? 0 : status ))
