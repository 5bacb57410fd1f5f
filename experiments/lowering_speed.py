"""Lowering cost on the CPU: wall time (median of repeats), tiles, distinct bitmaps and layout memory.

.venv/bin/python experiments/lowering_speed.py            # writes experiments/results/lowering_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from sparseattn.patterns import AShape, Causal, Pattern, PerHead, Streaming, Triangle

RESULTS = Path(__file__).parent / "results"


def measure(pattern: Pattern, n: int, block: tuple[int, int], repeats: int) -> dict[str, object]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layout = pattern.lower(n, block_size=block)
        times.append(time.perf_counter() - start)
    full, partial = layout.num_tiles()
    return {
        "pattern": repr(pattern)
        if len(repr(pattern)) < 60
        else type(pattern).__name__ + f"({pattern.num_heads} heads)",
        "tokens": n,
        "block": f"{block[0]}x{block[1]}",
        "median_s": statistics.median(times),
        "full_tiles": full,
        "partial_tiles": partial,
        "distinct_bitmaps": int(layout.tile_masks.shape[0]),
        "layout_MiB": layout.nbytes / 2**20,
        "density": layout.density(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixed = PerHead(tuple([Causal(), Triangle(), Streaming(128, 4096), AShape()] * 8))
    cases = [
        (Triangle(), 1 << 20, (64, 64)),
        (Triangle(), 1 << 20, (128, 128)),
        (Triangle(), 1 << 17, (64, 64)),
        (Streaming(sink=128, window=4096), 1 << 20, (64, 64)),
        (AShape(), 1 << 20, (64, 64)),
        (Causal(), 1 << 17, (128, 128)),
        (mixed, 1 << 17, (128, 128)),
    ]
    rows = [measure(p, n, b, args.repeats) for p, n, b in tqdm(cases, desc="lowering")]
    meta = {
        "date": date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "repeats": args.repeats,
        "command": "python experiments/lowering_speed.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowering_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    header = "| pattern | tokens | block | median s | full tiles | partial tiles | bitmaps | layout MiB | density |"
    lines = [
        f"# Lowering on the CPU\n\n`{meta['command']}` — {meta['date']}, torch {meta['torch']}, "
        f"1 thread, median of {args.repeats}.\n",
        header,
        "|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r['pattern']} | {r['tokens']:,} | {r['block']} | {r['median_s']:.3f} | {r['full_tiles']:,} | "
            f"{r['partial_tiles']:,} | {r['distinct_bitmaps']} | {r['layout_MiB']:.2f} | {r['density']:.5f} |"
        )
    (args.out / "lowering_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[1:]))


if __name__ == "__main__":
    main()
