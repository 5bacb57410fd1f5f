#!/usr/bin/env bash
# The test suite: sets up .venv on first use, then runs every test (CPU: Triton in interpreter mode).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -n 2 -q "$@"
