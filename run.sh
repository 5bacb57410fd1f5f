#!/usr/bin/env bash
# The main job: sets up .venv on first use, then runs the default experiment (see README).
#   ./run.sh                                  experiments/main.py
#   ./run.sh <app> [hydra overrides...]       experiments/<app>.py in .venv, e.g. ./run.sh ttft model=tiny_llama length=512
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
app=main
if [ $# -gt 0 ] && [[ "$1" != *=* ]] && [[ "$1" != -* ]]; then
  app=$1
  shift
  if [ ! -f "experiments/$app.py" ]; then
    echo "run.sh: no app experiments/$app.py; apps: $(cd experiments && ls ./*.py | sed 's|^\./||; s|\.py$||' | tr '\n' ' ')" >&2
    exit 2
  fi
fi
# Without a CUDA device the Triton kernels run in Triton's interpreter (set before Triton is imported).
if [ -z "${TRITON_INTERPRET:-}" ] && ! .venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export TRITON_INTERPRET=1
fi
exec .venv/bin/python "experiments/$app.py" "$@"
