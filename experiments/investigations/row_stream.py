"""Several short rows in one pipelined loop: does streaming rows remove the fixed cost per program?

    PYTHONPATH=experiments python experiments/investigations/row_stream.py --out $OUT      # on a Hopper GPU

``row_length_cost.md`` splits the short-row launch's time into a cost per tile (500 TFLOP/s at the
margin on 32 x 32 two-head tiles) and a fixed cost per program (0.130 ms over Triangle()'s 16,384
programs at 32K): the pipeline fill before a row's first tile and the drain after its last. A program
that runs ``R`` consecutive rows of one head pair as one loop over their ``R x 18`` tiles keeps the
software pipeline full across rows: the next row's K/V tiles are already in flight while a row's
output is stored. A row's state needs no reset: its running max starts again at -inf, so the first
tile's rescale factor (``exp2(-inf)``) zeroes the accumulator and the row sum by itself.

Same band as ``band_loop_gap.py`` (18 FULL 32 x 32 tiles ending at each diagonal, 32K tokens, B=1,
32 query heads, 8 kv heads, head dim 128, bf16, two heads per program), timed against the shared
kernel in rounds taken in turn. Rows before the 18th query block would reach before the first key; the
bare kernel clamps their tiles to block 0, so the check covers rows from the 18th on. Besides the
whole step at a row's end (store the output, load the next query block), two partial steps time
what each part costs. Writes
``row_stream.json`` and ``row_stream.md``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import triton
import triton.language as tl
from harness import Variant, inputs, remasked, report_variants
from triton.tools.tensor_descriptor import TensorDescriptor

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Window

TOKENS = 32768
BAND = 17  # tiles before the diagonal one
LOG2E = 1.4426950408889634
# What a program does when a row ends: (query block reloaded, output stored). The partial steps show
# what each costs; their outputs are not the band's (one query block for every row, one row stored).
STEPS = {
    "whole row step": (True, True),
    "output stored, no query reload": (False, True),
    "neither (running max reset only)": (False, False),
}


@triton.jit
def _row_stream_kernel(
    Q_DESC, K_DESC, V_DESC, Out, q_len, kv_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BAND: tl.constexpr,
    ROWS_PER_PROGRAM: tl.constexpr, STAGES: tl.constexpr, RELOAD_Q: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    # RELOAD_Q, STORE: a row's end as in STEPS (both on: the band's attention).
    ROWS: tl.constexpr = 2 * BLOCK_M
    TILES: tl.constexpr = BAND + 1
    pid = tl.program_id(0)
    h = (pid % 16) * 2
    qb = (pid // 16) * ROWS_PER_PROGRAM
    row0 = (h // 4) * kv_len
    r = tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM)
    head_off = (h + r // BLOCK_M).to(tl.int64) * q_len  # [ROWS]
    q = tl.reshape(Q_DESC.load([0, h, qb * BLOCK_M, 0]), [ROWS, HEAD_DIM])
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    for i in tl.range(0, ROWS_PER_PROGRAM * TILES, num_stages=STAGES):
        row_qb = qb + i // TILES
        start = tl.maximum(row_qb - BAND + i % TILES, 0) * BLOCK_N
        k = K_DESC.load([row0 + start, 0])
        v = V_DESC.load([row0 + start, 0])
        qk = tl.dot(q, tl.trans(k))  # [ROWS, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)  # 0 on a row's first tile: the accumulator restarts
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
        if i % TILES == TILES - 1:
            if STORE:
                offs_m = row_qb * BLOCK_M + r % BLOCK_M
                o_ptrs = Out + (head_off + offs_m)[:, None] * HEAD_DIM + offs_d[None, :]  # [ROWS, HEAD_DIM]
                tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty))
            m_i = tl.full([ROWS], float("-inf"), tl.float32)
            if RELOAD_Q:
                # Past the last query block the descriptor reads zeros, unused.
                q = tl.reshape(Q_DESC.load([0, h, (row_qb + 1) * BLOCK_M, 0]), [ROWS, HEAD_DIM])
    if not STORE:
        offs_m = (qb + ROWS_PER_PROGRAM - 1) * BLOCK_M + r % BLOCK_M
        o_ptrs = Out + (head_off + offs_m)[:, None] * HEAD_DIM + offs_d[None, :]  # [ROWS, HEAD_DIM]
        tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="rows per program")
    parser.add_argument("--stages", type=int, nargs="+", default=[3])
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, taken in turn")
    args = parser.parse_args()
    q, k, v = inputs(TOKENS)
    dim = q.shape[-1]
    layout = remasked(lower(Window(BAND * 32), TOKENS, block_size=(32, 32), device="cuda"), True)
    expected = triton_sparse_attention(q, k, v, layout)[0]
    q_desc = TensorDescriptor.from_tensor(q, [1, 2, 32, dim])
    k_desc = TensorDescriptor.from_tensor(k.view(-1, dim), [32, dim])
    v_desc = TensorDescriptor.from_tensor(v.view(-1, dim), [32, dim])
    out = torch.empty_like(q)
    variants: list[Variant] = [("shared kernel", lambda: triton_sparse_attention(q, k, v, layout), None, None)]
    for rows, stages, (steps, (reload_q, store)) in itertools.product(args.rows, args.stages, STEPS.items()):

        def launch(rows=rows, stages=stages, reload_q=reload_q, store=store):
            return _row_stream_kernel[(TOKENS // 32 // rows * 16,)](
                q_desc, k_desc, v_desc, out, TOKENS, TOKENS, dim**-0.5 * LOG2E, BLOCK_M=32, BLOCK_N=32,
                HEAD_DIM=dim, BAND=BAND, ROWS_PER_PROGRAM=rows, STAGES=stages, RELOAD_Q=reload_q, STORE=store,
                num_warps=4,
            )  # fmt: skip

        out.fill_(float("nan"))
        handle = launch()
        # Only the whole row step writes every row's output with its own query block.
        checked = slice(BAND * 32, None)
        diff = (out[:, :, checked].float() - expected[:, :, checked].float()).abs().max().item() if store else None
        variants.append((f"{rows} rows per program, {stages} stages, {steps}", launch, handle.n_regs, diff))
    caption = (
        f"{TOKENS} tokens, B=1, 32 query heads, 8 kv heads, head dim 128, bf16; rows of 18 FULL 32 x 32 tiles, "
        f"two heads per program; do_bench medians, {args.rounds} rounds taken in turn (`ms` the median round); "
        "`max diff` against the shared kernel from the 18th query block on (partial steps: not the band's output)."
    )
    report_variants(
        args.out, __file__,
        "Short rows streamed through one pipelined loop (bare kernel) against the shared kernel",
        caption, variants, layout, args.rounds,
    )  # fmt: skip


if __name__ == "__main__":
    main()
