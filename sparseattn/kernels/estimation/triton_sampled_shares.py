"""`BlockMass`'s sampled shares on the GPU, flash-style: the sampled rows' softmax is never written.

Same contract as the torch oracle `block_mass.sampled_block_shares`, which forms the fp32 logits and
softmax of every sampled row over every key (``[Hq, QB * samples, kv_len]``, in chunks of 512 MiB) and sums
them per key block. On Qwen2.5-0.5B at 32K that took 22.6 ms per layer on an H100, 5.6x the dense layer it
was meant to thin out (`experiments/results/long_context/long_context_qwen05b.md`, dynamic rules): the
arithmetic is ``samples / block_size`` of the attention's, the memory traffic is not.

Here one program takes the sampled rows of ``G`` consecutive query blocks of one query head (``G * S``
rows, ``S`` the samples padded to a power of two) and walks the key blocks they reach twice: first the
rows' running max and sum (their log-sum-exp), then each key block's probability mass, summed over its
``S`` rows per query block. K is read per program, not per row, and nothing but the ``[Hq, QB, KB]``
shares reaches memory.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

ROWS = 64  # sampled rows per program (G query blocks x S samples)


@triton.jit
def _seen_scores(
    q, k_base, start, offs_n, offs_d, d_ok, stride_ks, kv_len, valid, q_pos, scale, INPUT_PRECISION: tl.constexpr
):
    """[G*S, BLOCK] scaled scores of the rows against keys ``start + offs_n``, ``-inf`` where a row does not
    see the key (causal, or a padding row)."""
    keys = start + offs_n
    k = tl.load(
        k_base + keys[:, None] * stride_ks + offs_d[None, :], mask=(keys < kv_len)[:, None] & d_ok[None, :], other=0.0
    )  # [BLOCK, HEAD_DIM]
    scores = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale
    return tl.where(valid[:, None] & (keys[None, :] <= q_pos[:, None]), scores, float("-inf"))


@triton.jit
def _sampled_shares_kernel(
    Q, K, ROW_IDX, OUT,
    stride_qh, stride_qs, stride_kh, stride_ks, stride_oh, stride_og,
    q_len, kv_len, q_blocks, samples, group, scale,
    BLOCK: tl.constexpr, S: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, DIM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    # The last query blocks reach the most keys: they start first, so the short programs fill the tail
    # (longest-first order, as the attention kernels' work lists).
    g0 = (tl.num_programs(1) - 1 - tl.program_id(1)).to(tl.int64) * G
    i = tl.arange(0, G * S).to(tl.int64)  # [G*S] row slot: query block g0 + i // S, sample i % S
    g = g0 + i // S
    j = i % S
    valid = (g < q_blocks) & (j < samples)  # [G*S]
    row = tl.load(ROW_IDX + g * samples + j, mask=valid, other=0)  # [G*S] sampled query index
    q_pos = row + (kv_len - q_len)  # bottom-right alignment
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < DIM
    q = tl.load(
        Q + h * stride_qh + row[:, None] * stride_qs + offs_d[None, :], mask=valid[:, None] & d_ok[None, :], other=0.0
    )  # [G*S, HEAD_DIM]
    k_base = K + (h // group) * stride_kh
    offs_n = tl.arange(0, BLOCK).to(tl.int64)  # [BLOCK]
    # The furthest key any row here sees: the last row of the program's last query block.
    g_last = tl.minimum(g0 + G, q_blocks) - 1
    hi = tl.minimum(tl.minimum((g_last + 1) * BLOCK, q_len) + (kv_len - q_len), kv_len)

    m = tl.full([G * S], -1.0e30, tl.float32)  # finite, so that rows with nothing yet give exp(-inf) = 0
    total = tl.zeros([G * S], dtype=tl.float32)
    for start in range(0, hi, BLOCK):
        scores = _seen_scores(
            q, k_base, start, offs_n, offs_d, d_ok, stride_ks, kv_len, valid, q_pos, scale, INPUT_PRECISION
        )
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(scores - m_new[:, None]), axis=1)
        m = m_new
    lse = m + tl.log(tl.where(valid, total, 1.0))  # [G*S]

    out_rows = OUT + h * stride_oh + (g0 + tl.arange(0, G)).to(tl.int64) * stride_og  # [G]
    out_ok = (g0 + tl.arange(0, G)) < q_blocks
    for start in range(0, hi, BLOCK):
        scores = _seen_scores(
            q, k_base, start, offs_n, offs_d, d_ok, stride_ks, kv_len, valid, q_pos, scale, INPUT_PRECISION
        )
        probs = tl.exp(scores - lse[:, None])  # [G*S, BLOCK] exact zeros where unseen
        per_block = tl.sum(tl.reshape(tl.sum(probs, axis=1), (G, S)), axis=1)  # [G] mass of this key block
        tl.store(out_rows + start // BLOCK, per_block / samples, mask=out_ok)


def triton_sampled_shares(q: Tensor, k: Tensor, rows: Tensor, block: int) -> Tensor:
    """``[Hq, QB, KB]`` fp32: for query block ``g``, the mean over its sampled rows ``rows[g]`` of the softmax
    mass (scaled by ``1/sqrt(D)``, causal, bottom-right aligned) falling in each ``block``-key block; 0 out
    of reach. ``q [1, Hq, q_len, D]``, ``k [1, Hkv, kv_len, D]`` (query head ``h`` reads kv head
    ``h // (Hq // Hkv)``), ``rows`` int ``[QB, samples]`` from `block_mass.sampled_rows`. No host sync."""
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    q_blocks, samples = rows.shape
    if q_blocks != -(-q_len // block):
        raise ValueError(f"rows: expected {-(-q_len // block)} query blocks of {block} rows, got {q_blocks}")
    if samples < 1:
        raise ValueError(f"rows: expected at least one sample per query block, got {samples}")
    out = torch.zeros(heads, q_blocks, -(-kv_len // block), dtype=torch.float32, device=q.device)
    if not (heads and q_blocks and kv_len):
        return out
    q3, k3 = q[0], k[0]
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    if k3.stride(-1) != 1:
        k3 = k3.contiguous()
    s = max(1, triton.next_power_of_2(samples))
    per_program = max(1, ROWS // s)  # query blocks per program: G * S >= ROWS rows, enough for tl.dot
    _sampled_shares_kernel[(heads, triton.cdiv(q_blocks, per_program))](
        q3, k3, rows.contiguous(), out,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), out.stride(0), out.stride(1),
        q_len, kv_len, q_blocks, samples, heads // kv_heads, 1.0 / math.sqrt(dim),
        BLOCK=block, S=s, G=per_program, HEAD_DIM=triton.next_power_of_2(dim), DIM=dim,
        # The interpreter multiplies in fp32 whatever it is told; tf32x3 needs tensor cores. 16-bit inputs
        # give exact products in fp32 either way.
        INPUT_PRECISION="tf32x3" if q.is_cuda and q.dtype == torch.float32 else "ieee",
        num_warps=4,
    )  # fmt: skip
    return out
