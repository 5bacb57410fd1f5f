"""Vertical-slash line sums straight from q and k: no ``[Hq, n, kv_len]`` tensor is ever written.

The torch path (`estimation/vs_scores.py`) writes the last rows' fp32 logits, their softmax, a zero-padded
copy for the diagonals, and reads them back for two sums: at 128K with 32 query heads each of those
tensors is 1 GiB, and on an H100 the softmax and the copy were the costliest kernels of an estimate
(`experiments/results/profile_estimation.md`). A kernel that only fused the sums, still reading the
written logits, was slower than torch (`experiments/results/fused_estimation.md`): the traffic, not the
launches, is the cost. Here the logits are recomputed from q and k, which are small, in three launches:

1. `_row_stats_kernel`: for each chunk of keys, each last row's running max and sum of ``exp2`` of its
   logits (the flash-attention online softmax), one program per (kv head, chunk);
2. `_row_lse_kernel`: the chunks' partial statistics merged into each row's log-sum-exp (base 2);
3. `_line_sums_kernel`: one program per (kv head, block of ``BLOCK`` keys), for each query head of the
   group: the probabilities of the block's keys summed over the rows (columns), and those of the block's
   ``BLOCK`` diagonals. Row ``r`` sits at ``pos = kv_len - n + r``, so diagonal ``d`` is its key
   ``pos - d``: for a block of diagonals the rows' keys lie in one window of ``2 * BLOCK`` keys, whose
   logits are one product, and ``tl.gather`` shears them into ``[ROWS, BLOCK]`` (column ``i`` of row ``r``
   at window index ``r + BLOCK - 1 - i``) before the sum over rows. Each program owns its columns and
   diagonals: no atomics, deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparseattn.kernels.estimation.triton_vs_logits import last_query_inputs

LOG2E = 1.4426950408889634
BLOCK = 64  # key columns and diagonals per `_line_sums_kernel` program
STATS_BLOCK_N = 128  # keys per step of `_row_stats_kernel`
# Compiled offline for sm_90 (`tests/test_triton_line_sums.py` checks it): at 4 warps the [64, 128] fp32
# logits spill in `_line_sums_kernel`; at 8 warps neither kernel spills at head dims 64 to 256. The sums
# kernel's loops run over query heads, where pipelining only multiplies shared memory.
STATS_LAUNCH = {"num_warps": 8, "num_stages": 2}
SUMS_LAUNCH = {"num_warps": 8, "num_stages": 1}


@triton.jit
def _logits2(q, k, qk_scale2, IEEE: tl.constexpr):
    """``[R, C]`` base-2 logits of query rows q [R, HEAD_DIM] against keys k [C, HEAD_DIM], fp32."""
    if IEEE:
        # fp32 inputs must stay fp32: the default on Hopper would round them to TF32.
        return tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=tl.float32) * qk_scale2
    else:
        return tl.dot(q, tl.trans(k), out_dtype=tl.float32) * qk_scale2


@triton.jit
def _row_stats_kernel(
    Q, K, M_PART, L_PART,
    stride_qh, stride_qs, stride_kh, stride_ks,
    q_len, kv_len, n, group, total, qk_scale2, blocks_per_chunk, num_blocks,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Partial max and sum of exp2(logits) of the group's ``group * n`` last rows over one key chunk;
    grid (chunks, Hkv). Row ``m`` of the group is query head ``kv_head * group + m // n``, last row ``m % n``
    (the logits kernel's flattening), stored at ``[chunk, kv_head * group * n + m]``."""
    chunk = tl.program_id(0)
    kv_head = tl.program_id(1).to(tl.int64)
    rows = group * n
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    k_base = K + kv_head * stride_kh
    first_block = chunk * blocks_per_chunk
    last_block = tl.minimum(first_block + blocks_per_chunk, num_blocks)
    out = chunk.to(tl.int64) * total + kv_head * rows  # total = Hq * n flattened rows
    for m0 in range(0, rows, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        in_rows = offs_m < rows
        head = kv_head * group + offs_m // n  # [BLOCK_M]
        r = offs_m % n  # [BLOCK_M]
        q_ptrs = Q + head[:, None] * stride_qh + (q_len - n + r)[:, None].to(tl.int64) * stride_qs + offs_d[None, :]
        q = tl.load(q_ptrs, mask=in_rows[:, None], other=0.0)  # [BLOCK_M, HEAD_DIM]
        pos = (kv_len - n + r).to(tl.int64)  # [BLOCK_M] bottom-right aligned position
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for blk in range(first_block, last_block):
            offs_n = (blk * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # [BLOCK_N]
            k = tl.load(
                k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=(offs_n < kv_len)[:, None], other=0.0
            )
            s = tl.where(offs_n[None, :] <= pos[:, None], _logits2(q, k, qk_scale2, IEEE), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # [BLOCK_M]
            # A row that has seen no key yet keeps m = -inf: shift by 0 so exp2 never meets -inf - -inf.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
            m_i = m_new
        tl.store(M_PART + out + offs_m, m_i, mask=in_rows)
        tl.store(L_PART + out + offs_m, l_i, mask=in_rows)


@triton.jit
def _row_lse_kernel(M_PART, L_PART, LSE2, total, chunks, BLOCK: tl.constexpr):
    """``LSE2[i] = log2(sum over chunks of L * 2^M)`` for the ``total`` flattened rows; grid (row blocks,)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    ok = idx < total
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    offs = idx  # [BLOCK] int64 offsets of the rows in the current chunk
    for _ in range(chunks):
        m_c = tl.load(M_PART + offs, mask=ok, other=float("-inf"))
        l_c = tl.load(L_PART + offs, mask=ok, other=0.0)
        offs += total
        m_new = tl.maximum(m_i, m_c)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + l_c * tl.math.exp2(m_c - m_safe)
        m_i = m_new
    tl.store(LSE2 + idx, m_i + tl.math.log2(tl.where(ok, l_i, 1.0)), mask=ok)


@triton.jit
def _line_sums_kernel(
    Q, K, LSE2, COLUMNS, DIAGONALS,
    stride_qh, stride_qs, stride_kh, stride_ks, stride_ch, stride_dh,
    q_len, kv_len, n, group, qk_scale2,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Columns and diagonals ``b * BLOCK`` to ``(b + 1) * BLOCK`` of every query head of one kv head;
    grid (key blocks, Hkv)."""
    WIN: tl.constexpr = 2 * BLOCK  # holds BLOCK + ROWS - 1 keys: ROWS <= BLOCK, and a power of 2
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    offs_r = tl.arange(0, ROWS)  # [ROWS]
    offs_w = tl.arange(0, WIN)  # [WIN]
    k_base = K + kv_head * stride_kh
    cols = b * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] the block's key columns, and its diagonals
    in_kv = cols < kv_len
    k_cols = tl.load(k_base + cols[:, None] * stride_ks + offs_d[None, :], mask=in_kv[:, None], other=0.0)
    # Row offs_r's key on the block's diagonal i sits at window index offs_r + BLOCK - 1 - i.
    shear = (offs_r[:, None] + (BLOCK - 1) - tl.arange(0, BLOCK)[None, :]).to(tl.int32)  # [ROWS, BLOCK]
    for g in range(group):
        h = kv_head * group + g
        columns = tl.zeros([BLOCK], tl.float32)
        diagonals = tl.zeros([BLOCK], tl.float32)
        for t0 in range(0, n, ROWS):
            r = t0 + offs_r  # [ROWS]
            row_ok = r < n
            q = tl.load(
                Q + h * stride_qh + (q_len - n + r)[:, None].to(tl.int64) * stride_qs + offs_d[None, :],
                mask=row_ok[:, None],
                other=0.0,
            )  # [ROWS, HEAD_DIM]
            # Padding rows read +inf: their probabilities are exact zeros.
            lse2 = tl.load(LSE2 + h * n + r, mask=row_ok, other=float("inf"))  # [ROWS]
            pos = (kv_len - n + r).to(tl.int64)  # [ROWS]

            p = tl.math.exp2(_logits2(q, k_cols, qk_scale2, IEEE) - lse2[:, None])  # [ROWS, BLOCK]
            columns += tl.sum(tl.where(cols[None, :] <= pos[:, None], p, 0.0), 0)

            start = kv_len - n + t0 - b * BLOCK - (BLOCK - 1)  # the window's first key (may be negative)
            keys = start + offs_w  # [WIN]
            k_win = tl.load(
                k_base + keys[:, None] * stride_ks + offs_d[None, :],
                mask=((keys >= 0) & (keys < kv_len))[:, None],
                other=0.0,
            )  # [WIN, HEAD_DIM]
            p = tl.math.exp2(_logits2(q, k_win, qk_scale2, IEEE) - lse2[:, None])  # [ROWS, WIN]
            p = tl.where((keys[None, :] >= 0) & (keys[None, :] <= pos[:, None]), p, 0.0)
            diagonals += tl.sum(tl.gather(p, shear, 1), 0)  # [ROWS, BLOCK] sheared, summed over rows
        tl.store(COLUMNS + h * stride_ch + cols, columns, mask=in_kv)
        tl.store(DIAGONALS + h * stride_dh + cols, diagonals, mask=in_kv)


def _new_outputs(heads: int, kv_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Uninitialised column and diagonal sums (tests replace this to poison them with NaN)."""
    columns = torch.empty(heads, kv_len, dtype=torch.float32, device=device)
    return columns, torch.empty_like(columns)


def triton_line_sums(q: Tensor, k: Tensor, n: int, scale: float) -> tuple[Tensor, Tensor]:
    """``(columns, diagonals)``, fp32 ``[Hq, kv_len]``: the column and diagonal sums of the softmax of the
    last ``n`` rows of ``q`` [1, Hq, q_len, D] over ``k`` [1, Hkv, kv_len, D] (``scale * q k^T``, row ``r``
    at ``kv_len - n + r`` seeing the keys up to it), as ``column_sums`` and ``diagonal_sums`` of
    ``last_query_probs`` give them. ``diagonals[h, d]`` is the mass on ``q_pos - k = d``.

    Query head ``h`` reads kv head ``h // (Hq // Hkv)``; k is neither repeated nor copied. Three launches,
    no host synchronisation, memory ``O(Hq * n * chunks + Hq * kv_len)``.
    """
    q, k = last_query_inputs(q, k, n, scale)
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qk_scale2 = float(scale) * LOG2E
    ieee = q.dtype == torch.float32
    columns, diagonals = _new_outputs(heads, kv_len, q.device)

    num_blocks = triton.cdiv(kv_len, STATS_BLOCK_N)
    # About 512 statistics programs whatever the length: enough to fill 132 multiprocessors, few enough
    # that the merge reads a short list of chunks per row.
    blocks_per_chunk = max(1, num_blocks * kv_heads // 512)
    chunks = triton.cdiv(num_blocks, blocks_per_chunk)
    m_part = torch.empty(chunks, heads * n, dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    lse2 = torch.empty(heads * n, dtype=torch.float32, device=q.device)
    _row_stats_kernel[(chunks, kv_heads)](
        q, k, m_part, l_part,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2),
        q_len, kv_len, n, group, heads * n, qk_scale2, blocks_per_chunk, num_blocks,
        BLOCK_M=min(64, max(16, triton.next_power_of_2(group * n))), BLOCK_N=STATS_BLOCK_N, HEAD_DIM=dim,
        IEEE=ieee, **STATS_LAUNCH,
    )  # fmt: skip
    _row_lse_kernel[(triton.cdiv(heads * n, 256),)](m_part, l_part, lse2, heads * n, chunks, BLOCK=256)
    _line_sums_kernel[(triton.cdiv(kv_len, BLOCK), kv_heads)](
        q, k, lse2, columns, diagonals,
        q.stride(1), q.stride(2), k.stride(1), k.stride(2), columns.stride(0), diagonals.stride(0),
        q_len, kv_len, n, group, qk_scale2,
        ROWS=min(BLOCK, max(16, triton.next_power_of_2(n))), BLOCK=BLOCK, HEAD_DIM=dim, IEEE=ieee, **SUMS_LAUNCH,
    )  # fmt: skip
    return columns, diagonals
