"""Merge the partial results of a split row: out = sum_i w_i * out_i, lse = log sum_i exp(lse_i).

Each chunk of a split row wrote its own normalised output ``out_i`` and ``lse_i`` (natural log) to fp32
scratch; with ``w_i = exp(lse_i - lse)`` the merge is exact. Chunks that saw no key have ``lse_i = -inf``
and weight 0; a row where every chunk is empty keeps output 0 and lse -inf.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _merge_kernel(
    Out,
    LSE,
    O_PART,
    LSE_PART,
    MERGES,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    q_len,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.load(MERGES + pid * 5 + 0).to(tl.int64)
    h = tl.load(MERGES + pid * 5 + 1).to(tl.int64)
    qb = tl.load(MERGES + pid * 5 + 2).to(tl.int64)
    first = tl.load(MERGES + pid * 5 + 3).to(tl.int64)
    count = tl.load(MERGES + pid * 5 + 4)

    offs_m = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    neg_inf = float("-inf")

    lse_max = tl.full([BLOCK_M], neg_inf, tl.float32)
    for i in range(count):
        part = tl.load(LSE_PART + (first + i) * BLOCK_M + offs_m)  # [BLOCK_M]
        lse_max = tl.maximum(lse_max, part)
    # Rows that are empty in every chunk: any finite shift keeps exp() at 0 instead of NaN.
    shift = tl.where(lse_max == neg_inf, 0.0, lse_max)

    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for i in range(count):
        slot = first + i
        weight = tl.exp(tl.load(LSE_PART + slot * BLOCK_M + offs_m) - shift)  # [BLOCK_M]
        part = tl.load(O_PART + slot * BLOCK_M * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
        acc += weight[:, None] * part  # [BLOCK_M, HEAD_DIM]
        total += weight

    nonempty = total > 0
    total_safe = tl.where(nonempty, total, 1.0)
    out = acc / total_safe[:, None]
    lse = tl.where(nonempty, shift + tl.log(total_safe), neg_inf)

    rows = qb * BLOCK_M + offs_m  # [BLOCK_M]
    in_q = rows < q_len
    o_ptrs = Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=in_q[:, None])
    tl.store(LSE + b * stride_lb + h * stride_lh + rows, lse, mask=in_q)


def merge_partials(out: Tensor, lse: Tensor, out_part: Tensor, lse_part: Tensor, merges: Tensor, block_m: int) -> None:
    """Write the merged rows listed in ``merges`` into ``out`` [B, H, S, D] and ``lse`` [B, H, S] in place."""
    if merges.shape[0] == 0:
        return
    _merge_kernel[(merges.shape[0],)](
        out,
        lse,
        out_part,
        lse_part,
        merges,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        lse.stride(0),
        lse.stride(1),
        out.shape[2],
        BLOCK_M=block_m,
        HEAD_DIM=out.shape[3],
        num_warps=4,
    )
