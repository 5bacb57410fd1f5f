"""What PARTIAL tiles cost the kernel: each layout timed as lowered, then with the same tiles all
FULL (no bitmap, no masking), then all PARTIAL (every tile through the bitmap path, all-ones
bitmaps for the FULL ones).

    PYTHONPATH=experiments python experiments/investigations/partial_cost.py --out $OUT      # on a CUDA machine

The variants compute the same tiles and differ only in how each is masked, so their outputs are not
the pattern's (only the lowered layout is); this measures where the kernel's time goes, and bounds
what a cheaper partial path could gain. B=1, 32 query heads, 8 kv heads, head dim 128, bf16,
``triton.testing.do_bench`` medians, default launch configuration per layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import triton
from harness import SHAPE, inputs, remasked, run_line, run_meta, write_json
from tqdm import tqdm

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Pattern, Triangle

CASES: list[tuple[str, Pattern, int, tuple[int, int]]] = [
    ("triangle", Triangle(), 32768, (32, 32)),
    ("triangle", Triangle(), 131072, (32, 32)),
    ("causal", Causal(), 32768, (128, 128)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    rows = []
    for name, pattern, n, block in tqdm(CASES, desc="layouts"):
        q, k, v = inputs(n)
        lowered = lower(pattern, n, block_size=block, device="cuda")
        full, partial = lowered.num_tiles()
        row = {"pattern": name, "tokens": n, "block": list(block), "full_tiles": full, "partial_tiles": partial}
        for tag, layout in (
            ("lowered", lowered),
            ("all_full", remasked(lowered, True)),
            ("all_partial", remasked(lowered, False)),
        ):
            row[f"{tag}_ms"] = triton.testing.do_bench(
                lambda layout=layout, q=q, k=k, v=v: triton_sparse_attention(q, k, v, layout),
                return_mode="median",
            )
        rows.append(row)
        tqdm.write(str(row))
    meta = run_meta(__file__, args.out)
    write_json(args.out, "partial_cost", meta, rows)
    lines = [
        "# What PARTIAL tiles cost the kernel",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians in ms. `all FULL` / `all PARTIAL`:",
        "the lowered tiles with every tile unmasked / through the bitmap path (timing only: not the pattern).",
        "",
        "| pattern | tokens | block | FULL tiles | PARTIAL tiles | lowered | all FULL | all PARTIAL | "
        "PARTIAL share of lowered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = (r["lowered_ms"] - r["all_full_ms"]) / r["lowered_ms"]
        lines.append(
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {r['full_tiles']:,} | "
            f"{r['partial_tiles']:,} | {r['lowered_ms']:.3f} | {r['all_full_ms']:.3f} | {r['all_partial_ms']:.3f} | "
            f"{share:.1%} |"
        )
    (args.out / "partial_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))


if __name__ == "__main__":
    main()
