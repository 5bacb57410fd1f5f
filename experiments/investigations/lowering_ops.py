"""Count the torch operations one lowering dispatches, by the function that issues them.

    PYTHONPATH=experiments python experiments/investigations/lowering_ops.py          # writes experiments/results/lowering_ops.md

On a GPU every operation is a kernel launch, and at 128K tokens a static pattern's lowering is bound
by their number, not by their size (lowering_cuda.md); this count, taken on the CPU for the kernel
benchmark's patterns at 131072 tokens, is the torch paths' lever (the CUDA default now runs a compiled
program in three Triton kernels: lowering_launches.md). Operations are attributed to the innermost
`sparseattn` function on the stack.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import torch
from lowering_profile import HostClock

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Pattern, PerHead, Streaming, Triangle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    args = parser.parse_args()
    streaming, ashape, triangle = Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)
    cases: list[tuple[str, Pattern, tuple[int, int]]] = [
        ("causal", Causal(), (128, 128)),
        ("streaming", streaming, (128, 128)),
        ("ashape", ashape, (128, 128)),
        ("triangle", triangle, (32, 32)),
        ("mixture", PerHead(tuple([Causal(), streaming, ashape, triangle][h % 4] for h in range(32))), (128, 128)),
    ]
    lines = [
        "# Torch operations per lowering",
        "",
        f"`PYTHONPATH=experiments python experiments/investigations/lowering_ops.py` — "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}, counted on the CPU, "
        "131072 tokens. `program`: row segments through the compiled interval program answered by torch",
        "operations (`intervals=True, triton=False`; on a GPU, where each operation is a launch, the default",
        "runs the same program in three Triton kernels instead: lowering_launches.md counts its launches);",
        "`own methods`: row segments on the patterns' own methods (the",
        "default on the CPU; `PerHead` then runs each member on its own tiles, a selection per member);",
        "`tile by tile`: the per-tile oracle. Views (reshapes, slices) are counted with the rest.",
        "",
        "| pattern | block | program | own methods | tile by tile | busiest functions (program) |",
        "|---|---|---|---|---|---|",
    ]
    for name, pattern, block in cases:
        lower(pattern, 4096, block_size=block, num_heads=pattern.num_heads)  # first-use caches out of the way
        totals = []
        for options in ({"intervals": True, "triton": False}, {"intervals": False}, {"by_segments": False}):
            with HostClock() as counter:
                lower(pattern, 131072, block_size=block, num_heads=pattern.num_heads, **options)
            totals.append(sum(counter.ops.values()))
            if options.get("intervals"):
                top = ", ".join(f"{fn} {n}" for fn, n in counter.ops.most_common(4))
        lines.append(f"| {name} | {block[0]}x{block[1]} | {totals[0]} | {totals[1]} | {totals[2]} | {top} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowering_ops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[9:]))


if __name__ == "__main__":
    main()
