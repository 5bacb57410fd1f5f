"""Per-row top-k selection with the deterministic tie rule, one program per row, for block top-k estimation.

Same contract as the torch oracle `sparseattn.patterns.dynamic.topk.select_top`: keep the ``k`` highest
scores of each row; among scores equal to the k-th one, the lowest indices. ``torch.topk`` plus the tie
rule costs ~7 ms on the [32, 2048, 2048] score grid of a 128K prompt (many passes over the grid); here a
program holds its row in registers and finds the k-th largest value by a 32-step bisection on an
order-preserving integer key of the fp32 bits, then settles ties with a prefix count: one read of the
scores, one write of the mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Rows longer than this would not fit one program's registers (a 1M-token prompt has 16384 key blocks).
MAX_ROW = 16384


@triton.jit
def _select_top_kernel(SCORES, K, KEEP, n, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)  # [BLOCK]
    inside = offs < n
    x = tl.load(SCORES + row * stride_row + offs, mask=inside, other=float("-inf"))  # [BLOCK] fp32
    k = tl.load(K + row)
    x = x + 0.0  # -0.0 becomes +0.0: the two compare equal as floats and must share one key
    bits = x.to(tl.int32, bitcast=True)
    # Negative floats order backwards as integers: flipping their magnitude bits makes signed int32
    # order match float order (-inf lowest, +inf highest); widened to int64 so the bisection cannot wrap.
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)  # [BLOCK]
    # Padding sits below every real key, so it is never counted above a real threshold.
    key = tl.where(inside, key, -(2**31) - 1)
    # Largest t with at least k keys >= t: the k-th largest key, built one bit at a time from the top.
    t = tl.full([], -(2**31), tl.int64)
    for bit in tl.static_range(31, -1, -1):
        cand = t + (1 << bit)
        count = tl.sum((key >= cand).to(tl.int32), 0)
        t = tl.where(count >= k, cand, t)
    above = key > t
    at = key == t
    need = k - tl.sum(above.to(tl.int32), 0)
    keep = above | (at & (tl.cumsum(at.to(tl.int32), 0) <= need))
    tl.store(KEEP + row * n + offs, keep.to(tl.int8), mask=inside)


def triton_select_top(scores: Tensor, k: Tensor) -> Tensor:
    """bool mask of the ``k[..., None]`` best entries of each row of fp32 ``scores`` (last dim), ties to
    the lowest index; ``k`` broadcasts against ``scores.shape[:-1]`` with ``1 <= k <= scores.shape[-1]``.

    No host synchronisation. Scores must be free of NaN (the estimators mask with +-inf only).
    """
    if scores.dtype != torch.float32:
        raise ValueError(f"scores: expected float32, got {scores.dtype}")
    n = scores.shape[-1]
    if not 1 <= n <= MAX_ROW:
        raise ValueError(f"scores: rows of 1..{MAX_ROW} entries expected, got {n}")
    rows = scores.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    counts = k.expand(scores.shape[:-1]).reshape(-1).to(device=scores.device, dtype=torch.int32).contiguous()
    keep = torch.empty(rows.shape, dtype=torch.int8, device=scores.device)
    block = max(triton.next_power_of_2(n), 16)
    warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    if rows.shape[0]:
        _select_top_kernel[(rows.shape[0],)](rows, counts, keep, n, rows.stride(0), BLOCK=block, num_warps=warps)
    return keep.view(torch.bool).view(scores.shape)
