"""Triangle() in two launches: the window rows on 32 x 32 tiles, the dense last rows on 128 x 128.

Triangle()'s last 128 query rows are dense causal: they span the whole prompt, a fifth of the pattern's
pairs at 32K and 128K. On the 32 x 32 tiles that suit the window rows they run at the short-tile rate;
on 128 x 128 tiles they would run at the dense rate. The two row sets are disjoint, so the pattern is
exactly the window rows (``Triangle(last=0) & ~LastQueries(128)``, which leaves the last rows empty)
plus the last rows as a 128-query chunk over the whole prompt (``Causal()`` at ``q_len=128``).

Times, at each length, rounds taken in turn: the single launch `sparse_attention` runs today; each part
alone (the last rows on 128 x 128 tiles cut into chunks of 32 tiles, as their 32 equal rows would
otherwise leave most of the GPU idle); the two parts one after the other (the last rows written into
the first launch's output); and dense causal, whose TFLOP/s the others are compared with. Checks first
that the two-launch output equals the single launch's. Writes ``strip_split.json`` and ``strip_split.md``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from harness import (
    computed_tflops,
    default_layout,
    inputs,
    run_line,
    run_meta,
    spread,
    timed_rounds,
    write_json,
)

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, LastQueries, Triangle

LAST = 128
STRIP_CHUNK = 32  # tiles per program on the last rows' 128 x 128 launch


def launches(n: int) -> tuple[list[tuple[str, Callable[[], object], list[BlockLayout]]], float, float]:
    """The variants at ``n`` tokens (name, launch, layouts it computes), and the two-launch output's max
    differences from the single launch's (out, lse)."""
    q, k, v = inputs(n)
    whole = default_layout(Triangle(), n)
    band = default_layout(Triangle(last=0) & ~LastQueries(LAST), n)
    strip_128 = lower(Causal(), LAST, n, block_size=(128, 128), device="cuda")
    strip_32 = lower(Causal(), LAST, n, block_size=whole.block_size, device="cuda")
    dense = default_layout(Causal(), n)
    q_last = q[:, :, n - LAST :]

    def last_rows() -> tuple[torch.Tensor, torch.Tensor]:
        # 32 rows of n / 128 tiles: cut into chunks of STRIP_CHUNK so that they spread over the GPU.
        return triton_sparse_attention(q_last, k, v, strip_128, max_chunk=STRIP_CHUNK, heavy_first=True)

    def split() -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = triton_sparse_attention(q, k, v, band)
        out[:, :, n - LAST :], lse[:, :, n - LAST :] = last_rows()
        return out, lse

    expected, expected_lse = triton_sparse_attention(q, k, v, whole)
    got, got_lse = split()
    diff = (got.float() - expected.float()).abs().max().item()
    lse_diff = (got_lse - expected_lse).abs().max().item()
    if diff > 1e-2 or lse_diff > 1e-3:
        raise RuntimeError(f"{n}: the two launches differ from the single one by {diff} (lse {lse_diff})")
    variants = [
        ("single launch, 32x32", lambda: triton_sparse_attention(q, k, v, whole), [whole]),
        ("window rows alone, 32x32", lambda: triton_sparse_attention(q, k, v, band), [band]),
        ("last rows alone, 128x128", last_rows, [strip_128]),
        ("last rows alone, 32x32", lambda: triton_sparse_attention(q_last, k, v, strip_32), [strip_32]),
        ("two launches, 32x32 + 128x128", split, [band, strip_128]),
        ("dense causal, 128x128", lambda: triton_sparse_attention(q, k, v, dense), [dense]),
    ]
    return variants, diff, lse_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for n in args.lengths:
        variants, diff, lse_diff = launches(n)
        times = timed_rounds([launch for _, launch, _ in variants], args.rounds)
        for (name, _, layouts), t in zip(variants, times, strict=True):
            ms = statistics.median(t)
            # TFLOP/s of a two-launch variant: both layouts' flops over the one time.
            tflops = sum(computed_tflops(lay, ms) for lay in layouts)
            rows.append(
                {"tokens": n, "variant": name, "ms": ms, "ms_rounds": t, "tflops": tflops,
                 "max_diff": diff, "lse_max_diff": lse_diff}
            )  # fmt: skip
    meta = run_meta(__file__, args.out)
    write_json(args.out, "strip_split", meta, rows)
    lines = [
        "# Triangle() in two launches: window rows on 32 x 32 tiles, the dense last rows on 128 x 128",
        "",
        run_line(meta),
        f"B=1, 32 query heads, 8 kv heads, head dim 128, bf16; do_bench medians, {args.rounds} rounds in turn "
        "(`ms` the median round); TFLOP/s over each launch's computed tiles. Two-launch output equal to the "
        f"single launch's: max diff {max(r['max_diff'] for r in rows):.1e}.",
        "",
        "| tokens | variant | ms | range | TFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['ms']:.3f} | {spread(r['ms_rounds'])} | {r['tflops']:.0f} |"
        )
    (args.out / "strip_split.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
