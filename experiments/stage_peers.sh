#!/usr/bin/env bash
# Stage the authors' kernels for the benchmarks' peer columns, outside the repository's history.
#
#   experiments/stage_peers.sh <MInference checkout or bare git dir> [dest=.peers]
#
# Copies from microsoft/MInference (MIT license; its code never enters this repository: .peers/ is in
# .gitignore):
#   minference/ops/streaming_kernel.py            TriangleMix's tri_shape_kernel and the streaming kernel
#   minference/ops/pit_sparse_flash_attention_v2.py  the vertical-slash Triton kernel; it imports
#       `minference.cuda` (csrc/vertical_slash_index.cu, the index builder, CUDA C++ only), which pip
#       cannot build here.
# The package __init__ files are empty (ours), so importing the kernels pulls in nothing else of MInference.
# minference/cuda.py is ours too: it stands in for the CUDA builder with experiments/minference_indexes.py
# (the same arrays, from this project's reading of the builder's rules; experiments/ must be on sys.path,
# as it is for every benchmark), so MInference's module imports unchanged and its kernel can be timed.
# The benchmarks put <dest> on sys.path when it exists. A GPU call carries it: carry=[".peers"].
set -euo pipefail
src=${1:?usage: stage_peers.sh <MInference checkout or bare git dir> [dest]}
dest=${2:-.peers}
files=(minference/ops/streaming_kernel.py minference/ops/pit_sparse_flash_attention_v2.py)

rm -rf "$dest"
mkdir -p "$dest/minference/ops"
: >"$dest/minference/__init__.py"
: >"$dest/minference/ops/__init__.py"
cat >"$dest/minference/cuda.py" <<'PY'
"""Not MInference's code: written by sparseattn's experiments/stage_peers.sh in place of MInference's CUDA
index builder (csrc/vertical_slash_index.cu), which is not built here."""
from minference_indexes import convert_vertical_slash_indexes  # noqa: F401  (experiments/minference_indexes.py)
PY
if git --git-dir="$src" rev-parse --is-bare-repository >/dev/null 2>&1 && [ ! -d "$src/minference" ]; then
    rev=$(git --git-dir="$src" rev-parse HEAD)
    for f in "${files[@]}" LICENSE; do git --git-dir="$src" show "HEAD:$f" >"$dest/${f#./}"; done
else
    rev=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
    for f in "${files[@]}" LICENSE; do cp "$src/$f" "$dest/$f"; done
fi
echo "microsoft/MInference $rev" >"$dest/SOURCE"
echo "staged MInference $rev into $dest: ${files[*]}"
