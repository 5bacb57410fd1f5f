"""Issuing the next tile's ``Q K^T`` before this tile's softmax, measured on its own.

    PYTHONPATH=experiments python experiments/investigations/scores_ahead.py --out experiments/results   # on a Hopper GPU

FlashAttention-3 overlaps a warpgroup's softmax with its next ``Q K^T``. In the shared kernel that form
makes ptxas serialise every wgmma (``kernel_options_rejected.md``), so this script isolates the loop:
every program runs a band of FULL 32-column tiles for two heads (64 query rows, the query block in
registers, TMA loads, three stages), as the short-row launch does on Triangle()'s window, once as the
kernel's loop and once two tiles per step with the next scores issued ahead (no enclosing branch,
which is what keeps ptxas from serialising it). Outputs must be equal; then do_bench medians. Writes
``scores_ahead.json`` and ``scores_ahead.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
import triton.language as tl
from harness import run_line, run_meta, write_json
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634
PROGRAMS = 16384  # Triangle()'s 32K window: 1,024 query blocks x 16 two-head programs
HEAD_DIM = 128
BLOCK_N = 32
ROWS = 64


@triton.jit
def _probs(l_i, m_i, qk, qk_scale):
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # [ROWS]
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # [ROWS, BLOCK_N]
    return p, alpha, l_i * alpha + tl.sum(p, 1), m_new


@triton.jit
def _band_kernel(
    Q_DESC, K_DESC, V_DESC, Out, n_tiles, qk_scale,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, AHEAD: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    base = (pid % 1024) * BLOCK_N  # neighbouring programs share most of their band, as a window's do
    q = tl.reshape(Q_DESC.load([0, pid * 2, 0, 0]), [ROWS, HEAD_DIM])
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    if not AHEAD:
        for i in tl.range(0, n_tiles, num_stages=3):
            k = K_DESC.load([base + i * BLOCK_N, 0])
            v = V_DESC.load([base + i * BLOCK_N, 0])
            p, alpha, l_i, m_i = _probs(l_i, m_i, tl.dot(q, tl.trans(k)), qk_scale)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    else:
        # Tile 0's softmax, then two tiles per step: tile i's softmax runs while tile i+1's scores are
        # computed, and tile i+2's scores are issued before tile i+1's softmax; n_tiles must be even.
        p, alpha, l_i, m_i = _probs(l_i, m_i, tl.dot(q, tl.trans(K_DESC.load([base, 0]))), qk_scale)
        acc = acc * alpha[:, None]
        s_a = tl.dot(q, tl.trans(K_DESC.load([base + BLOCK_N, 0])))
        for i in tl.range(1, n_tiles - 2, 2, num_stages=3):
            acc = tl.dot(p.to(tl.bfloat16), V_DESC.load([base + (i - 1) * BLOCK_N, 0]), acc)
            s_b = tl.dot(q, tl.trans(K_DESC.load([base + (i + 1) * BLOCK_N, 0])))
            p, alpha, l_i, m_i = _probs(l_i, m_i, s_a, qk_scale)
            acc = tl.dot(p.to(tl.bfloat16), V_DESC.load([base + i * BLOCK_N, 0]), acc * alpha[:, None])
            s_a = tl.dot(q, tl.trans(K_DESC.load([base + (i + 2) * BLOCK_N, 0])))
            p, alpha, l_i, m_i = _probs(l_i, m_i, s_b, qk_scale)
            acc = acc * alpha[:, None]
        acc = tl.dot(p.to(tl.bfloat16), V_DESC.load([base + (n_tiles - 2) * BLOCK_N, 0]), acc)
        p, alpha, l_i, m_i = _probs(l_i, m_i, s_a, qk_scale)
        acc = tl.dot(p.to(tl.bfloat16), V_DESC.load([base + (n_tiles - 1) * BLOCK_N, 0]), acc * alpha[:, None])
    out = acc / l_i[:, None]  # [ROWS, HEAD_DIM]
    r = tl.arange(0, ROWS)
    d = tl.arange(0, HEAD_DIM)
    tl.store(Out + (pid * ROWS + r)[:, None].to(tl.int64) * HEAD_DIM + d[None, :], out.to(tl.bfloat16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--tiles", type=int, nargs="*", default=[16, 32, 64], help="tiles per program (even)")
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 2 * PROGRAMS, 32, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn((1024 + max(args.tiles)) * BLOCK_N, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(k.shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    q_desc = TensorDescriptor.from_tensor(q, [1, 2, 32, HEAD_DIM])
    k_desc = TensorDescriptor.from_tensor(k, [BLOCK_N, HEAD_DIM])
    v_desc = TensorDescriptor.from_tensor(v, [BLOCK_N, HEAD_DIM])
    rows = []
    for n_tiles in args.tiles:
        if n_tiles % 2 or n_tiles < 4:
            raise ValueError(f"--tiles: expected even counts of at least 4, got {n_tiles}")
        outs = {}
        for ahead in (False, True):
            out = torch.empty(PROGRAMS * ROWS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

            def launch(out=out, ahead=ahead, n_tiles=n_tiles):
                return _band_kernel[(PROGRAMS,)](
                    q_desc, k_desc, v_desc, out, n_tiles, HEAD_DIM**-0.5 * LOG2E,
                    ROWS=ROWS, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM, AHEAD=ahead, num_warps=4,
                )  # fmt: skip

            handle = launch()
            torch.cuda.synchronize()
            outs[ahead] = out.clone()
            ms = triton.testing.do_bench(launch, return_mode="median")
            flops = PROGRAMS * n_tiles * ROWS * BLOCK_N * 4 * HEAD_DIM
            rows.append(
                dict(tiles=n_tiles, ahead=ahead, ms=ms, tflops=flops / ms / 1e9, registers=handle.n_regs,
                     spills=handle.n_spills)
            )  # fmt: skip
        diff = (outs[True].float() - outs[False].float()).abs().max().item()
        if diff > 0.02:
            raise RuntimeError(f"the two loops disagree by {diff} at {n_tiles} tiles")
        rows[-1]["max_diff"] = rows[-2]["max_diff"] = diff
    meta = run_meta(__file__, args.out)
    write_json(args.out, "scores_ahead", meta, rows)
    lines = [
        "# Next tile's scores issued before this tile's softmax (band rows of FULL 32 x 32 tiles, two heads)",
        "",
        run_line(meta),
        f"{PROGRAMS:,} programs of 64 query rows x head dim {HEAD_DIM}, bf16; do_bench medians.",
        "",
        "| tiles per program | loop | registers | ms | TFLOP/s | max diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        loop = "scores issued ahead" if r["ahead"] else "the kernel's loop"
        lines.append(
            f"| {r['tiles']} | {loop} | {r['registers']} | {r['ms']:.3f} | {r['tflops']:.0f} | {r['max_diff']:.1e} |"
        )
    (args.out / "scores_ahead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
