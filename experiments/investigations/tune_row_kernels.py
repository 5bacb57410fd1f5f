"""Warps and chunk sizes of the row kernels of the dynamic path, timed at 128K on the GPU.

The dynamic estimates scan one row per program: block top-k's selection (`triton_block_topk_keep`) and
the layout lists (`triton_tile_lists`, `triton_column_lists`). Each variant is first checked equal to
the default's output, then timed with ``triton.testing.do_bench`` (median) on block top-k's shapes
(32 heads, 2048 x 2048 grid of 64-wide blocks) and vertical-slash's 512 columns per head:

    PYTHONPATH=experiments python experiments/investigations/tune_row_kernels.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from triton.testing import do_bench

from sparseattn.kernels.estimation.triton_topk import triton_block_topk_keep
from sparseattn.kernels.lowering.triton_tile_lists import CHUNK, WARPS, triton_column_lists, triton_tile_lists
from sparseattn.lowering.tile_grid import causal_bitmaps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=131072)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    n, block, heads = args.length, 64, 32
    nb = n // block
    gen = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(heads, nb, nb, device="cuda", generator=gen)
    counts = torch.full((heads, 1), 64, device="cuda")
    keep = triton_block_topk_keep(scores, counts, n, n, block)
    keys = torch.sort(torch.randperm(n, device="cuda", generator=gen)[: heads * 512].view(heads, 512), -1).values
    _, kind_ids = causal_bitmaps(block, n, n)
    rows = []

    def run(kernel, variant, fn, view, reference):
        """Time ``fn`` alone; compare ``view(fn())`` (the filled content) with the default's."""
        same = all(torch.equal(a, b) for a, b in zip(view(fn()), reference, strict=True))
        ms = do_bench(fn, warmup=5, rep=50, return_mode="median")
        rows.append({"kernel": kernel, **variant, "equal_to_default": same, "ms": ms})
        print(f"{kernel:14s} {variant} equal={same} {ms:.3f} ms", flush=True)

    for warps in (1, 2, 4, 8, 16):
        select = lambda warps=warps: triton_block_topk_keep(scores, counts, n, n, block, num_warps=warps)
        run("select", {"num_warps": warps}, select, lambda out: (out,), (keep,))

    def compact(num, start, *flats):
        """Each row's entries back to back (rows may sit at fixed slots with gaps between them)."""
        num, start = num.reshape(-1).long(), start.reshape(-1)
        first = torch.cumsum(num, 0) - num
        within = torch.arange(int(num.sum()), device=num.device) - torch.repeat_interleave(first, num)
        where = torch.repeat_interleave(start, num) + within
        return [f[where] for f in flats]

    def list_view(out):
        f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid = out
        return f_num, p_num, *compact(f_num, f_start, f_idx), *compact(p_num, p_start, p_idx, p_mid)

    def column_view(out):
        c_num, c_start, c_idx = out
        return c_num, *compact(c_num, c_start, c_idx)

    lists = lambda **kw: triton_tile_lists(keep, kind_ids, q_len=n, kv_len=n, block=block, **kw)
    columns = lambda **kw: triton_column_lists(keys, keep, q_len=n, kv_len=n, block=block, **kw)
    ref_lists, ref_cols = list_view(lists()), column_view(columns())
    for chunk, warps in ((256, 1), (512, 1), (512, 2), (1024, 2), (1024, 4), (2048, 4), (2048, 8)):
        variant = {"chunk": chunk, "num_warps": warps}
        run("tile_lists", variant, lambda c=chunk, w=warps: lists(chunk=c, num_warps=w), list_view, ref_lists)
        run("column_lists", variant, lambda c=chunk, w=warps: columns(chunk=c, num_warps=w), column_view, ref_cols)
    # Block top-k's own bound (budget + 3 forced blocks) gives FULL rows fixed slots: one pass.
    bounded = lambda: lists(chunk=CHUNK, num_warps=WARPS, row_bound=67)
    run("tile_lists_bounded", {"chunk": CHUNK, "num_warps": WARPS}, bounded, list_view, ref_lists)
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "row_kernels.json").write_text(json.dumps({"length": n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
