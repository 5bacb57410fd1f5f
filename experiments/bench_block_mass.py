"""`BlockMass` (adaptive block budget) at 128K on the GPU: estimate, lower, attention, end to end.

Same shapes and structured synthetic q/k as ``bench_dynamic.py``; ``BlockTopK(64)`` timed beside it.
Writes ``block_mass_bench.json`` and ``.md`` to ``--out`` (default: a fresh folder,
outputs/bench_block_mass/<time>):

    python experiments/bench_block_mass.py --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch
import triton
from harness import structured_qkv
from triton.testing import do_bench

from sparseattn.estimation import BlockMass, BlockTopK
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=131072)
    stamp = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    # A fresh folder by default; --out experiments/results (or $OUT) updates committed results explicitly.
    parser.add_argument("--out", default=f"outputs/bench_block_mass/{stamp}")
    args = parser.parse_args()
    n = args.length
    q, k, v = structured_qkv(32, 8, n, 128, seed=0)
    rows = []
    for pattern in (BlockMass(0.95), BlockMass(0.8), BlockTopK(64)):
        tiles = pattern.estimate(q, k)
        layout = lower(tiles, n, n)
        kept = tiles.tiles.sum(-1).float()
        row = {
            "pattern": repr(pattern),
            "mean_blocks_per_row": kept.mean().item(),
            "max_blocks_per_row": kept.max().item(),
            "estimate_and_lower_ms": do_bench(lambda p=pattern: lower(p.estimate(q, k), n, n), return_mode="median"),
            "attention_ms": do_bench(lambda lay=layout: triton_sparse_attention(q, k, v, lay), return_mode="median"),
            "end_to_end_ms": do_bench(
                lambda p=pattern: triton_sparse_attention(q, k, v, lower(p.estimate(q, k), n, n)), return_mode="median"
            ),
        }
        rows.append(row)
        print(row, flush=True)
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python experiments/bench_block_mass.py --out $OUT",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "length": n,
    }
    (out / "block_mass_bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Adaptive block budget at {n} tokens",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}.",
        "B=1, 32 q heads, 8 kv heads, head dim 128, bf16, structured synthetic q/k (bench_dynamic.py); do_bench medians.",
        "",
        "| pattern | mean blocks per row | max | estimate + lower ms | attention ms | end to end ms | overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pattern']} | {r['mean_blocks_per_row']:.1f} | {r['max_blocks_per_row']:.0f} "
            f"| {r['estimate_and_lower_ms']:.2f} | {r['attention_ms']:.2f} | {r['end_to_end_ms']:.2f} "
            f"| {100 * (r['end_to_end_ms'] / r['attention_ms'] - 1):.1f}% |"
        )
    (out / "block_mass_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
