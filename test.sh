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
# worksteal: a worker that runs out of tests takes queued ones from the other, so one slow file
# at the end of a queue does not leave a core idle.
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q "$@"
