"""Lowering cost: wall time (median of repeats) of each row-segment variant and tile by tile, plus the
kernel's plan.

    python experiments/lowering_speed.py                      # CPU: writes experiments/results/lowering_cpu.{json,md}
    python experiments/lowering_speed.py --device cuda --out $OUT   # the kernel benchmark's patterns at 128K
    python experiments/lowering_speed.py --minference              # writes experiments/results/lowering_minference_cpu.*
    python experiments/lowering_speed.py --minference --device cuda --out $OUT   # the Triton walk of the runs

On CUDA the patterns are those of ``bench_kernel.py`` (its per-head mixture included) at 131072 tokens
on its tile shapes, and ``plan ms`` is the first call's work-list build for 32 query heads (heaviest
rows first, long rows split), the other host-side step before a static layout's first kernel launch.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import LOWERING_VARIANTS, RESULTS, wall_median
from tqdm import tqdm

from sparseattn.estimation import VerticalSlashIndices
from sparseattn.estimation.vs_indices import torch_minference_runs
from sparseattn.eval.provenance import cpu_name
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


def minference_pattern(n: int, heads: int, vertical: int, slash: int) -> VerticalSlashIndices:
    """MInference-like lines: random columns, the 64 local diagonals plus random ones (seeded)."""
    gen = torch.Generator().manual_seed(0)
    pick = lambda count, lo: (lo + torch.randperm(n - lo, generator=gen)[: count - 64]).tolist()
    cols = [sorted(torch.randperm(n, generator=gen)[:vertical].tolist()) for _ in range(heads)]
    diags = [sorted([*range(64), *pick(slash, 64)]) for _ in range(heads)]
    return VerticalSlashIndices(torch.tensor(cols), torch.tensor(diags), form="minference", block_size=64)


# (tokens, heads, verticals, slashes, time the tile-by-tile path too): MInference's default budgets. Tile by
# tile took 9 s for one head at 2K (and had not finished one head at 8K after minutes), so it runs at 2K.
MINFERENCE_CASES = [(2048, 1, 1000, 2000, True), (8192, 14, 1000, 6096, False), (32768, 14, 1000, 6096, False)]


def measure_minference(repeats: int, device: str) -> list[dict]:
    """``form="minference"`` from its runs against tile by tile (the latter where it finishes in minutes)."""
    return [minference_row(*case, repeats, device) for case in tqdm(MINFERENCE_CASES, desc="minference form")]


def minference_row(n: int, heads: int, vertical: int, slash: int, old: bool, repeats: int, device: str) -> dict:
    pattern = minference_pattern(n, heads, vertical, slash).to(device)
    pattern.minference_runs(n // 64)  # compiles the Triton walk on CUDA
    runs_ms, runs = wall_median(lambda: pattern.minference_runs(n // 64), device, repeats)
    # On CUDA the runs come from the Triton walk: its torch oracle beside it (one run, ~15 launches a slash).
    torch_runs_ms = same_runs = None
    if device == "cuda":
        torch_runs_ms, want = wall_median(lambda: torch_minference_runs(pattern.slash, 64, n // 64), device, 1)
        same_runs = all(torch.equal(a, b) for a, b in zip(runs, want, strict=True))
    new_ms, layout = wall_median(lambda: lower(pattern, n, block_size=(64, 64), device=device), device, repeats)
    tiles_ms = same = None
    if old:
        tiles_ms, oracle = wall_median(
            lambda: lower(pattern, n, block_size=(64, 64), by_segments=False, device=device), device, 1
        )
        same = bool(torch.equal(layout.to_dense(), oracle.to_dense()))
    full, partial = layout.num_tiles()
    return {
        "tokens": n,
        "heads": heads,
        "verticals": vertical,
        "slashes": slash,
        "runs_ms": runs_ms,
        "torch_runs_ms": torch_runs_ms,
        "same_runs": same_runs,
        "from_runs_ms": new_ms,
        "tiles_ms": tiles_ms,
        "same_mask": same,
        "full_tiles": full,
        "partial_tiles": partial,
        "gathered_columns": int(layout.col_num.sum()) if layout.col_num is not None else 0,
        "density": layout.density(),
    }


def minference_markdown(meta: dict, rows: list[dict]) -> list[str]:
    lines = [
        f'# Lowering `form="minference"` on {meta["device"]}\n\n`{meta["command"]}` — {meta["date"]}, torch '
        f"{meta['torch']}, {meta['host_threads']} host threads, median of {meta['repeats']} (tile by tile: one run).\n",
        "64x64 tiles, row block 64; random columns, the 64 local diagonals plus random ones. `from runs`: "
        "`lower(pattern)` (`minference_layout`), `runs` its `minference_runs` share; `tile by tile`: "
        "`lower(..., by_segments=False)`, the mask on every tile, only where it finishes in minutes; "
        "`same mask`: both layouts' token masks equal. On CUDA `runs` is the Triton walk "
        "(`triton_minference_runs`), `torch runs` its oracle (`torch_minference_runs`, one run), `same runs` "
        "the two equal.\n",
        "| tokens | heads | verticals | slashes | runs ms | torch runs ms | same runs | from runs ms | tile by tile ms "
        "| same mask | full tiles | partial tiles | gathered columns | density |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        old = "not run" if r["tiles_ms"] is None else f"{r['tiles_ms']:,.0f}"
        same = "—" if r["same_mask"] is None else ("yes" if r["same_mask"] else "NO")
        torch_runs = "—" if r.get("torch_runs_ms") is None else f"{r['torch_runs_ms']:,.1f}"
        same_runs = "—" if r.get("same_runs") is None else ("yes" if r["same_runs"] else "NO")
        lines.append(
            f"| {r['tokens']:,} | {r['heads']} | {r['verticals']} | {r['slashes']} | {r['runs_ms']:,.2f} | "
            f"{torch_runs} | {same_runs} | "
            f"{r['from_runs_ms']:,.1f} | {old} | {same} | {r['full_tiles']:,} | {r['partial_tiles']:,} | "
            f"{r['gathered_columns']:,} | {r['density']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch host threads (0: torch's default)")
    parser.add_argument("--minference", action="store_true", help="time form='minference' instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.minference:
        minference_main(args)
        return
    # First-use costs (CUDA context, allocator, kernel compilation) out of the way.
    for _, options in LOWERING_VARIANTS[args.device]:
        lower(PerHead((Triangle(), Causal())), 4096, device=args.device, **options)
    rows = [measure(*case, args.device, args.repeats) for case in tqdm(cases(args.device), desc="lowering")]
    meta = run_meta(args)
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


def run_meta(args: argparse.Namespace) -> dict:
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": gpu or cpu_name(),
        "torch": torch.__version__,
        "host_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "command": " ".join(
            ["python experiments/lowering_speed.py", *("$OUT" if a == str(args.out) else a for a in sys.argv[1:])]
        ),
    }


def minference_main(args: argparse.Namespace) -> None:
    rows = measure_minference(args.repeats, args.device)
    meta = run_meta(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"lowering_minference_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = minference_markdown(meta, rows)
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[1:]))


if __name__ == "__main__":
    main()
