"""What a short row costs the kernel: a fixed part per program against a part per tile.

Every query block of a 32K prompt gets a band of ``n`` FULL tiles ending at its diagonal (a `Window`
of ``n`` tiles, lowered, then every tile unmasked as in ``partial_cost.py``), for ``n`` from a
handful, as in Triangle()'s rows, to hundreds. A least-squares line through (tiles, ms) splits the
time into a cost per tile and a fixed cost; the fixed part, spread over the programs, is the setup a
program pays whatever its length (Q load, pipeline fill, epilogue). Each tile shape runs with its
default launch: 32 x 32 tiles with two query heads per program (short rows) and 128 x 128 with one
(dense rows). B=1, 32 query heads, 8 kv heads, head dim 128, bf16, ``triton.testing.do_bench`` medians.

    PYTHONPATH=experiments python experiments/investigations/row_length_cost.py --out $OUT      # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
from harness import SHAPE, inputs, remasked, run_line, run_meta, write_json
from tqdm import tqdm

from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.lowering import lower
from sparseattn.patterns import Window

TOKENS = 32768
BANDS = {(32, 32): [2, 4, 8, 16, 32, 64, 128], (128, 128): [1, 2, 4, 8, 16, 32]}


def fit(tiles: list[float], ms: list[float]) -> tuple[float, float]:
    """(ms per tile, fixed ms) of the least-squares line through the points."""
    x = torch.tensor(tiles, dtype=torch.float64)
    y = torch.tensor(ms, dtype=torch.float64)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    slope, intercept = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
    return slope, intercept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON in --out")
    args = parser.parse_args()
    if args.render_only:
        print(render(args.out))
        return
    q, k, v = inputs(TOKENS)
    group = q.shape[1] // k.shape[1]
    rows = []
    for block, bands in BANDS.items():
        for n in tqdm(bands, desc=f"{block[0]}x{block[1]}"):
            layout = remasked(lower(Window(n * block[1]), TOKENS, block_size=block, device="cuda"), True)
            config = default_config(layout, q.shape[-1], group)
            programs = work_list(layout, 1, q.shape[1], pack=config.pack, runs=config.full_runs).items.shape[0]
            tiles = sum(layout.num_tiles()) * q.shape[1] // config.pack  # tile loads over all programs
            ms = triton.testing.do_bench(
                lambda layout=layout: triton_sparse_attention(q, k, v, layout), return_mode="median"
            )
            rows.append(
                {"block": list(block), "band": n, "pack": config.pack, "programs": programs, "tiles": tiles, "ms": ms}
            )
    meta = run_meta(__file__, args.out)
    write_json(args.out, "row_length_cost", meta, rows)
    print(render(args.out))


def render(out: Path) -> str:
    """Write ``row_length_cost.md`` from ``row_length_cost.json`` in ``out``; return its tables."""
    record = json.loads((out / "row_length_cost.json").read_text())
    rows = record["rows"]
    lines = [
        "# Fixed cost per program against cost per tile",
        "",
        run_line(record["meta"]),
        f"{TOKENS} tokens, {SHAPE}; every row a band of FULL tiles",
        "ending at its diagonal (`band` + 1 tiles); `tile steps` counts tiles over all programs (a packed",
        "program's tile once); `ns per tile step` is the whole GPU's time over them.",
        "",
        "| block | heads/program | band | programs | tile steps | ms | ns per tile step |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = [
        "",
        "Least-squares line through (tile steps, ms) per tile shape; the marginal rate counts 4 x 128 flops",
        "per query-key pair of a tile step:",
        "",
        "| block | ns per tile step | marginal TFLOP/s | fixed ms | fixed share at the shortest band | at the longest |",
        "|---|---|---|---|---|---|",
    ]
    for block in BANDS:
        mine = [r for r in rows if r["block"] == list(block)]
        for r in mine:
            lines.append(
                f"| {block[0]}x{block[1]} | {r['pack']} | {r['band']} | {r['programs']:,} | {r['tiles']:,} | "
                f"{r['ms']:.3f} | {1e6 * r['ms'] / r['tiles']:.1f} |"
            )
        slope, fixed = fit([r["tiles"] for r in mine], [r["ms"] for r in mine])
        flops = 4 * 128 * mine[0]["pack"] * block[0] * block[1]
        summary.append(
            f"| {block[0]}x{block[1]} | {1e6 * slope:.2f} | {flops / (slope * 1e9):.0f} | {fixed:.3f} | "
            f"{fixed / mine[0]['ms']:.0%} | {fixed / mine[-1]['ms']:.0%} |"
        )
    tables = "\n".join(lines[7:] + summary)
    (out / "row_length_cost.md").write_text("\n".join(lines + summary) + "\n")
    return tables


if __name__ == "__main__":
    main()
