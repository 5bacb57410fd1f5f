"""Count the torch operations one vertical-slash estimate and its lowering dispatch, on the CPU.

    PYTHONPATH=experiments python experiments/investigations/estimation_ops.py --label "$(git rev-parse --short HEAD)"

On a GPU each operation is a launch the host issues (several microseconds of Python and driver time), and on
a real model's layer at 32K the estimate and lowering cost more in launches than in arithmetic (issue 32).
This count is the CPU's: the CUDA path swaps some torch operations for Triton kernels (the tile lists, and
the slash tiles since `triton_slash_tiles`), so it bounds what the torch side of that path issues. Shape:
Qwen2.5-0.5B's layer (14 query heads, 2 kv heads, head dim 64), 32768 tokens, `VerticalSlash(512, 2048)`.
Each run appends one row (labelled with the commit) to ``estimation_ops_cpu.jsonl`` and rewrites the table.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from lowering_profile import HostClock

from sparseattn.estimation import VerticalSlash
from sparseattn.lowering import lower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="what was measured, e.g. the commit")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    args = parser.parse_args()
    n = 32768
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 14, n, 64, generator=gen), torch.randn(1, 2, n, 64, generator=gen)
    rule = VerticalSlash(512, 2048)
    lower(rule.estimate(q, k), n, n)  # first-use caches out of the way, as in a model's later layers
    estimate = rule.estimate(q, k)
    row: dict = {"label": args.label, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    for name, step in (("estimate", lambda: rule.estimate(q, k)), ("lower", lambda: lower(estimate, n, n))):
        with HostClock() as counter:
            step()
        row[name] = sum(counter.ops.values())
        row[f"{name}_busiest"] = dict(counter.ops.most_common(4))
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "estimation_ops_cpu.jsonl"
    with records.open("a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    lines = [
        "# Torch operations per vertical-slash estimate and lowering (CPU)",
        "",
        "`PYTHONPATH=experiments python experiments/investigations/estimation_ops.py --label <commit>`, torch "
        f"{torch.__version__}; 14 query / 2 kv heads, head dim 64, 32768 tokens, `VerticalSlash(512, 2048)`, "
        "counted after a first call (memoised shape tables warm). Views are counted with the rest.",
        "",
        "| label | date | estimate | lower | busiest functions (lower) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        busiest = ", ".join(f"{fn} {c}" for fn, c in r["lower_busiest"].items())
        lines.append(f"| {r['label']} | {r['date']} | {r['estimate']} | {r['lower']} | {busiest} |")
    (args.out / "estimation_ops_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) :]))


if __name__ == "__main__":
    main()
