"""Count the torch operations one lowering dispatches, by the function that issues them.

    PYTHONPATH=. python experiments/lowering_ops.py          # writes experiments/results/lowering_ops.md

On a GPU every operation is a kernel launch, and at 128K tokens a static pattern's lowering is bound
by their number, not by their size (lowering_cuda.md); this count, taken on the CPU for the kernel
benchmark's patterns at 131072 tokens, is the lever. Operations are attributed to the innermost
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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    streaming, ashape, triangle = Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)
    cases: list[tuple[str, Pattern, tuple[int, int]]] = [
        ("causal", Causal(), (128, 128)),
        ("streaming", streaming, (128, 128)),
        ("ashape", ashape, (128, 128)),
        ("triangle", triangle, (64, 64)),
        ("mixture", PerHead(tuple([Causal(), streaming, ashape, triangle][h % 4] for h in range(32))), (128, 128)),
    ]
    lines = [
        "# Torch operations per lowering",
        "",
        f"`PYTHONPATH=. python experiments/lowering_ops.py` — "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}, on the CPU, "
        "131072 tokens. On the CPU `PerHead` runs each member on its own tiles (a selection per member);",
        "on a GPU it runs every member on every tile instead, which dispatches fewer. `tile by tile`: the same",
        "lowering forced through the per-tile path (`by_segments=False`, the oracle), whose operations are",
        "about as many but each over every candidate tile, with a host sync per boolean selection.",
        "",
        "| pattern | block | by row segments | tile by tile | busiest functions (by row segments) |",
        "|---|---|---|---|---|",
    ]
    for name, pattern, block in cases:
        lower(pattern, 4096, block_size=block, num_heads=pattern.num_heads)  # first-use caches out of the way
        totals = []
        for segments in (True, False):
            with HostClock() as counter:
                lower(pattern, 131072, block_size=block, num_heads=pattern.num_heads, by_segments=segments)
            totals.append(sum(counter.ops.values()))
            if segments:
                top = ", ".join(f"{fn} {n}" for fn, n in counter.ops.most_common(4))
        lines.append(f"| {name} | {block[0]}x{block[1]} | {totals[0]} | {totals[1]} | {top} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowering_ops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[8:]))


if __name__ == "__main__":
    main()
