"""Lowering cost: wall time (median of repeats) of each row-segment variant and tile by tile, plus the
kernel's plan.

    python experiments/lowering_speed.py                      # CPU: writes experiments/results/lowering_cpu.{json,md}
    python experiments/lowering_speed.py --device cuda --out $OUT   # the kernel benchmark's patterns at 128K

On CUDA the patterns are those of ``bench_kernel.py`` (its per-head mixture included) at 131072 tokens
on its tile shapes, and ``plan ms`` is the first call's work-list build for 32 query heads (heaviest
rows first, long rows split), the other host-side step before a static layout's first kernel launch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import LOWERING_VARIANTS, RESULTS, wall_median
from tqdm import tqdm

from sparseattn.kernels.planning.work_list import work_list
from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Documents, Pattern, PerHead, Streaming, Triangle
from sparseattn.testing import layouts_differ

HEADS = 32

EXPLAINED = {
    "triton program": "the expression compiled into one interval program, run by three Triton kernels",
    "torch program": "the same program answered by torch operations (`intervals=True, triton=False`)",
    "own methods": "on the patterns' own methods (`intervals=False`)",
}


def measure(name: str, pattern: Pattern, n: int, block: tuple[int, int], device: str, repeats: int) -> dict:
    heads = pattern.num_heads
    times, layouts = {}, []
    for column, options in LOWERING_VARIANTS[device]:
        step = lambda options=options: lower(pattern, n, block_size=block, num_heads=heads, device=device, **options)
        times[column], layout = wall_median(step, device, repeats)
        layouts.append(layout)
    tiles = lambda: lower(pattern, n, block_size=block, num_heads=heads, device=device, by_segments=False)
    tile_ms, oracle = wall_median(tiles, device, max(1, repeats // 3))
    same = all(layouts_differ(layout, oracle) is None for layout in layouts)
    plan_ms = None
    if device == "cuda":
        plans = [lower(pattern, n, block_size=block, num_heads=heads, device=device) for _ in range(repeats)]
        it = iter(plans)
        plan_ms, _ = wall_median(lambda: work_list(next(it), 1, HEADS), device, repeats)
    full, partial = layouts[0].num_tiles()
    return {
        "pattern": name,
        "tokens": n,
        "block": f"{block[0]}x{block[1]}",
        "segments_ms": times,
        "tiles_ms": tile_ms,
        "plan_ms": plan_ms,
        "equal_layouts": same,
        "full_tiles": full,
        "partial_tiles": partial,
        "distinct_bitmaps": int(layouts[0].tile_masks.shape[0]),
        "layout_MiB": layouts[0].nbytes / 2**20,
    }


def cases(device: str) -> list[tuple[str, Pattern, int, tuple[int, int]]]:
    streaming, ashape, triangle = Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)
    mixture = PerHead(tuple([Causal(), streaming, ashape, triangle][h % 4] for h in range(HEADS)))
    if device == "cuda":
        n, big = 1 << 17, (128, 128)
        return [
            ("causal", Causal(), n, big),
            ("streaming", streaming, n, big),
            ("ashape", ashape, n, big),
            ("triangle", triangle, n, (64, 64)),
            ("triangle", triangle, n, (32, 32)),
            ("mixture", mixture, n, big),
        ]
    return [
        ("triangle", triangle, 1 << 20, (64, 64)),
        ("triangle", triangle, 1 << 17, (64, 64)),
        ("streaming", streaming, 1 << 20, (64, 64)),
        ("ashape", AShape(), 1 << 20, (64, 64)),
        ("causal", Causal(), 1 << 17, (128, 128)),
        ("mixture", mixture, 1 << 17, (128, 128)),
        ("packed documents", Causal() & Documents(tuple(range(1300, 1 << 17, 1300))), 1 << 17, (64, 64)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch host threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # First-use costs (CUDA context, allocator, kernel compilation) out of the way.
    for _, options in LOWERING_VARIANTS[args.device]:
        lower(PerHead((Triangle(), Causal())), 4096, device=args.device, **options)
    rows = [measure(*case, args.device, args.repeats) for case in tqdm(cases(args.device), desc="lowering")]
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": gpu or (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "host_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "command": " ".join(
            ["python experiments/lowering_speed.py", *("$OUT" if a == str(args.out) else a for a in sys.argv[1:])]
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"lowering_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    columns = [column for column, _ in LOWERING_VARIANTS[args.device]]
    lines = [
        f"# Lowering on {meta['device']}\n\n`{meta['command']}` — {meta['date']}, torch {meta['torch']}, "
        f"{meta['host_threads']} host threads, median of {args.repeats} (tile by tile: of {max(1, args.repeats // 3)}).\n",
        "Row segments, each variant timed in the same run, this device's default first: "
        + "; ".join(f"`{c}`: {EXPLAINED[c]}" for c in columns)
        + ". `tile by tile`: the per-tile oracle. `same layout`: every variant's layout equals the oracle's.\n",
        "| pattern | tokens | block | "
        + " | ".join(f"{c} ms" for c in columns)
        + " | tile by tile ms | plan ms | same layout | full tiles | partial tiles | bitmaps | layout MiB |",
        "|" + "---|" * (10 + len(columns)),
    ]
    for r in rows:
        plan = "—" if r["plan_ms"] is None else f"{r['plan_ms']:.2f}"
        variants = " | ".join(f"{r['segments_ms'][c]:.2f}" for c in columns)
        lines.append(
            f"| {r['pattern']} | {r['tokens']:,} | {r['block']} | {variants} | {r['tiles_ms']:.1f} | "
            f"{plan} | {'yes' if r['equal_layouts'] else 'NO'} | {r['full_tiles']:,} | {r['partial_tiles']:,} | "
            f"{r['distinct_bitmaps']} | {r['layout_MiB']:.2f} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[1:]))


if __name__ == "__main__":
    main()
