"""How far dense causal is from cuDNN, and how much of that is this kernel's generality: cuDNN, the
block-sparse kernel on Causal(), the same kernel told the FULL tiles of a row are one run (no index
loads; exact for causal only), and a plain causal flash-attention kernel written here with no layout
at all (off-diagonal tiles unmasked, the diagonal tile masked from indices, heaviest q-blocks first).

    PYTHONPATH=experiments python experiments/investigations/dense_ceiling.py --out $OUT      # on a CUDA machine

B=1, 32 query heads, 8 kv heads, head dim 128, bf16, 128 x 128 tiles, 8 warps, 3 stages;
``triton.testing.do_bench`` medians. Each variant is checked against cuDNN's output first.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
import triton
import triton.language as tl
from harness import SHAPE, cudnn_dense, inputs, run_line, run_meta, write_json

from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal

LOG2E = 1.4426950408889634


@triton.jit
def _plain_causal_kernel(
    Q, K, V, Out, qk_scale, n, HEADS: tl.constexpr, GROUP: tl.constexpr,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_STAGES: tl.constexpr,
):  # fmt: skip
    qb = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest rows first
    bh = tl.program_id(1).to(tl.int64)
    kv = (bh // HEADS) * (HEADS // GROUP) + (bh % HEADS) // GROUP
    offs_m = qb * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + bh * n * HEAD_DIM
    k_base = K + kv * n * HEAD_DIM
    v_base = V + kv * n * HEAD_DIM
    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :])  # [BLOCK, HEAD_DIM]
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    for start in tl.range(0, (qb + 1) * BLOCK, BLOCK, num_stages=NUM_STAGES):
        rows = (start + offs_n)[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        k = tl.load(k_base + rows)
        v = tl.load(v_base + rows)
        qk = tl.dot(q, tl.trans(k))  # [BLOCK, BLOCK]
        if start == qb * BLOCK:
            qk = tl.where(offs_m[:, None] >= (start + offs_n)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        Out + bh * n * HEAD_DIM + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :],
        out.to(Out.dtype.element_ty),
    )


def plain_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of contiguous ``q`` [B, H, n, D] over ``k, v`` [B, Hkv, n, D], n a multiple of 128
    (the kernel has no bounds masks)."""
    b, h, n, d = q.shape
    if n % 128 or not all(t.is_contiguous() for t in (q, k, v)) or k.shape != v.shape or h % k.shape[1]:
        raise ValueError(
            f"q, k, v: expected contiguous [B, H, n, D] and [B, Hkv, n, D] with n % 128 == 0 and Hkv dividing H, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    out = torch.empty_like(q)
    grid = (n // 128, b * h)
    _plain_causal_kernel[grid](
        q, k, v, out, LOG2E / math.sqrt(d), n, HEADS=h, GROUP=h // k.shape[1], BLOCK=128, HEAD_DIM=d, NUM_STAGES=3,
        num_warps=8,
    )  # fmt: skip
    return out


def measure(n: int) -> list[dict]:
    """Each variant at ``n`` tokens: max error against cuDNN's output, then its do_bench median."""
    q, k, v = inputs(n)
    layout = lower(Causal(), n, block_size=(128, 128), device="cuda")
    config = default_config(layout, 128, group=4)
    variants = {
        "cuDNN SDPA": lambda: cudnn_dense(q, k, v),
        "block-sparse, FULL tiles by index": lambda: triton_sparse_attention(
            q, k, v, layout, config=dataclasses.replace(config, full_runs=False)
        )[0],
        "block-sparse, FULL tiles by runs": lambda: triton_sparse_attention(
            q, k, v, layout, config=dataclasses.replace(config, full_runs=True)
        )[0],
        "plain causal kernel (pointer loads)": lambda: plain_causal(q, k, v),
    }
    rows = []
    truth = variants["cuDNN SDPA"]().float()
    for name, fn in variants.items():
        err = float((fn().float() - truth).abs().max())
        ms = triton.testing.do_bench(fn, return_mode="median")
        rows.append({"tokens": n, "variant": name, "ms": ms, "max_err_vs_cudnn": err})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--lengths", type=int, nargs="*", default=[32768, 131072])
    args = parser.parse_args()
    rows = [row for n in args.lengths for row in measure(n)]
    cudnn = {r["tokens"]: r["ms"] for r in rows if r["variant"] == "cuDNN SDPA"}
    meta = run_meta(__file__, args.out)
    write_json(args.out, "dense_ceiling", meta, rows)
    lines = [
        "# Dense causal: the block-sparse kernel against a plain causal kernel and cuDNN",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians; TFLOP/s count 4·D flops per causal pair.",
        "",
        "| tokens | variant | ms | TFLOP/s | vs cuDNN | max err vs cuDNN |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["tokens"]
        tflops = 4 * 128 * 32 * n * (n + 1) / 2 / (r["ms"] * 1e-3) / 1e12
        lines.append(
            f"| {n} | {r['variant']} | {r['ms']:.3f} | {tflops:.0f} | {cudnn[n] / r['ms']:.3f}x | {r['max_err_vs_cudnn']:.1e} |"
        )
    (args.out / "dense_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
