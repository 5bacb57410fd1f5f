#!/usr/bin/env bash
# The test suite: sets up .venv on first use, then lint (ruff), format (ruff format), types (mypy)
# and every test (pytest; on a CPU-only machine Triton runs in its interpreter).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# loadgroup: tests spread over both cores, except that those marked with one xdist_group share a
# worker (the real-model tests load their weights once).
exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q "$@"
