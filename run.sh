#!/usr/bin/env bash
# The main job: sets up .venv on first use, then runs the default experiment (see README).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python experiments/main.py "$@"
