"""Vertical-slash line sums of the last queries' softmax, in one launch from the logits and their row lse.

Same contract as the torch oracle ``column_sums(softmax(logits))`` and ``diagonal_sums(softmax(logits))``
(`estimation/vs_scores.py`). There the probabilities are written once by the softmax, read by the column
sum, copied into a zero-padded buffer and read again through a strided view for the diagonals, then
flipped: five passes over ``[H, n, kv_len]`` fp32 and as many launches, the largest device cost of an
estimate at 32K on an H100 (`experiments/results/profile_estimation.md`). Here each probability is formed
in registers from the logits and the row's lse, and each program reads its tile twice: straight for the
columns, and sheared for the diagonals (row ``r`` of the last ``n`` sits at ``q_pos = kv_len - n + r``, so
diagonal ``d`` is its key ``q_pos - d``: a reversed contiguous slice of that row), so that neither sum needs
atomics or a padded copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 128  # key columns (and diagonals) per program


@triton.jit
def _line_sums_kernel(
    LOGITS, LSE, COLUMNS, DIAGONALS,
    stride_lh, stride_lr, stride_sh, stride_ch, stride_dh,
    n, kv_len,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] a key column, then a diagonal
    in_range = j < kv_len
    columns = tl.zeros([BLOCK], dtype=tl.float32)
    diagonals = tl.zeros([BLOCK], dtype=tl.float32)
    for r0 in range(0, n, ROWS):
        r = r0 + tl.arange(0, ROWS).to(tl.int64)  # [ROWS]
        row_ok = r < n
        lse = tl.load(LSE + h * stride_sh + r, mask=row_ok, other=0.0)  # [ROWS]
        rows = LOGITS + h * stride_lh + r[:, None] * stride_lr  # [ROWS, 1]
        inside = row_ok[:, None] & in_range[None, :]  # [ROWS, BLOCK]

        logits = tl.load(rows + j[None, :], mask=inside, other=float("-inf"))
        columns += tl.sum(tl.exp(logits - lse[:, None]), axis=0)  # masked (-inf) logits add exact zeros

        key = (kv_len - n + r)[:, None] - j[None, :]  # [ROWS, BLOCK] the key on diagonal j of row r
        logits = tl.load(rows + key, mask=inside & (key >= 0), other=float("-inf"))
        diagonals += tl.sum(tl.exp(logits - lse[:, None]), axis=0)
    tl.store(COLUMNS + h * stride_ch + j, columns, mask=in_range)
    tl.store(DIAGONALS + h * stride_dh + j, diagonals, mask=in_range)


def triton_line_sums(logits: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """``(columns, diagonals)``, fp32 ``[H, kv_len]`` each, of ``softmax(logits)`` over the last rows.

    ``logits`` fp32 ``[H, n, kv_len]`` (``-inf`` above the causal diagonal, as `last_query_logits` gives
    them), ``lse`` fp32 ``[H, n]`` its rows' log-sum-exp. ``columns[h, k]`` is the mass key ``k`` receives,
    ``diagonals[h, d]`` the mass on ``q_pos - k = d``. On the logits' device, no host sync.
    """
    if logits.dim() != 3 or logits.dtype != torch.float32:
        raise ValueError(f"logits: expected fp32 [H, n, kv_len], got {logits.dtype} {tuple(logits.shape)}")
    heads, n, kv_len = logits.shape
    if lse.shape != (heads, n) or lse.dtype != torch.float32 or lse.device != logits.device:
        raise ValueError(f"lse: expected fp32 ({heads}, {n}) on {logits.device}, got {lse.dtype} {tuple(lse.shape)}")
    columns = torch.empty(heads, kv_len, dtype=torch.float32, device=logits.device)
    diagonals = torch.empty_like(columns)
    if heads and kv_len:
        logits, lse = logits.contiguous(), lse.contiguous()
        _line_sums_kernel[(heads, triton.cdiv(kv_len, BLOCK))](
            logits, lse, columns, diagonals,
            logits.stride(0), logits.stride(1), lse.stride(0), columns.stride(0), diagonals.stride(0),
            n, kv_len,
            ROWS=min(64, max(16, triton.next_power_of_2(n))), BLOCK=BLOCK,
        )  # fmt: skip
    return columns, diagonals
