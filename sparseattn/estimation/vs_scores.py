"""MInference's vertical-slash statistics of the last queries, on whatever device q and k live on.

On CUDA three Triton launches that never write the last rows' probabilities (`triton_line_sums`); elsewhere,
and as their oracle, one batched matmul, one fp32 softmax and two reductions. No host synchronisation, no
loop over heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def line_sums(q: Tensor, k: Tensor, last_q: int, scale: float | None) -> tuple[Tensor, Tensor]:
    """``(columns, diagonals)``, fp32 ``[Hq, kv_len]``: `column_sums` and `diagonal_sums` of
    `last_query_probs`, the statistics vertical-slash selects its lines from.

    On CUDA `triton_line_sums` recomputes the logits from q and k instead of writing them, their softmax
    and a padded copy (three fp32 ``[Hq, n, kv_len]`` tensors, 1 GiB each at 128K with 32 query heads).
    An earlier kernel that fused only the sums, reading the written logits, was 8-15% slower than these
    torch operations on an H100 (`experiments/results/fused_estimation.md`).
    """
    n = min(last_q, q.shape[2])
    if q.is_cuda:
        from sparseattn.kernels.estimation.triton_line_sums import triton_line_sums

        return triton_line_sums(q, k, n, default_scale(q) if scale is None else scale)
    probs = last_query_probs(q, k, last_q, scale)
    return column_sums(probs), diagonal_sums(probs)


def default_scale(q: Tensor) -> float:
    """The attention's own scale, ``1 / sqrt(head_dim)``."""
    return 1.0 / math.sqrt(q.shape[-1])


def last_query_probs(q: Tensor, k: Tensor, last_q: int, scale: float | None) -> Tensor:
    """fp32 softmax of the last ``n = min(last_q, q_len)`` query rows over all keys: ``[Hq, n, kv_len]``.

    Causal inside the last rows: row ``r`` sits at ``q_pos = kv_len - n + r`` and sees keys ``<= q_pos``.
    Query head ``h`` reads kv head ``h // (Hq // Hkv)`` (GQA without repeating K). On CUDA the logits come
    from a Triton kernel that reads q and k in their own dtype (no fp32 copy of k); elsewhere from torch.
    """
    n = min(last_q, q.shape[2])
    scale = default_scale(q) if scale is None else scale
    if q.is_cuda:
        from sparseattn.kernels.estimation.triton_vs_logits import triton_last_query_logits

        logits = triton_last_query_logits(q, k, n, scale)
    else:
        logits = last_query_logits(q, k, n, scale)
    return torch.softmax(logits, dim=-1)


def last_query_logits(q: Tensor, k: Tensor, n: int, scale: float) -> Tensor:
    """``[Hq, n, kv_len]`` fp32: ``scale * q k^T`` of the last ``n`` query rows, -inf above the diagonal.

    The torch computation (fp32 copies of q's last rows and of all of k, one batched matmul); the CPU
    path of `last_query_probs` and the oracle of `triton_last_query_logits`.
    """
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[-1]
    kv_len = k.shape[2]
    group = heads // kv_heads
    last = q[0, :, q.shape[2] - n :].float().reshape(kv_heads, group * n, dim)
    logits = torch.matmul(last, k[0].float().transpose(-1, -2)).view(heads, n, kv_len) * scale
    rows = torch.arange(kv_len - n, kv_len, device=q.device).view(n, 1)
    cols = torch.arange(kv_len - n, kv_len, device=q.device).view(1, n)
    logits[:, :, kv_len - n :].masked_fill_(cols > rows, -math.inf)
    return logits


def column_sums(probs: Tensor) -> Tensor:
    """``[H, kv_len]``: attention mass each key column receives from the last rows."""
    return probs.sum(1)


def diagonal_sums(probs: Tensor) -> Tensor:
    """``[H, kv_len]``: entry ``d`` is the mass on the diagonal ``q_pos - k = d`` over the last rows.

    Each row is shifted by its index through a strided view of a zero-padded copy, so summing the
    view's rows adds up diagonals; masked (future) entries are exact zeros and add nothing.
    """
    heads, n, kv_len = probs.shape
    padded = F.pad(probs, (n, n))  # [H, n, kv_len + 2n]
    width = kv_len + 2 * n
    # view[h, r, c] = padded[h, r, c + r] = probs[h, r, c + r - n]: key k = c - n + r, so d = kv_len - c.
    view = padded.as_strided((heads, n, kv_len + n), (n * width, width + 1, 1))
    by_c = view.sum(1)
    return by_c[:, 1 : kv_len + 1].flip(-1)
