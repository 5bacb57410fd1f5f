"""The oracle: dense masked attention, written to be obviously right rather than fast.

Every fast path in the project is tested against this function on fresh random inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_ROWS_PER_CHUNK = 1024


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    *,
    scale: float | None = None,
    accum_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Masked softmax attention computed densely in ``accum_dtype``.

    Args:
        q: ``[B, Hq, q_len, D]``; k, v: ``[B, Hkv, kv_len, D]`` with ``Hkv`` dividing ``Hq`` (GQA: query
            head ``h`` reads kv head ``h // (Hq // Hkv)``).
        mask: bool ``[B|1, Hq|1, q_len, kv_len]`` (or ``[Hq|1, q_len, kv_len]``); True keeps the pair.
        scale: softmax scale, ``1 / sqrt(D)`` by default.
        accum_dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``(out, lse)``: ``out`` ``[B, Hq, q_len, D]`` in ``q.dtype``; ``lse`` ``[B, Hq, q_len]`` float32, the
        natural-log sum of exp of the scaled scores. A row with nothing to attend gives 0 and ``-inf``.
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    batch, heads, q_len, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    kf = k.to(accum_dtype).repeat_interleave(group, dim=1)
    vf = v.to(accum_dtype).repeat_interleave(group, dim=1)
    out = torch.empty(batch, heads, q_len, v.shape[-1], dtype=accum_dtype, device=q.device)
    lse = torch.empty(batch, heads, q_len, dtype=accum_dtype, device=q.device)
    mask = mask.to(q.device)
    for start in range(0, q_len, _ROWS_PER_CHUNK):
        stop = min(start + _ROWS_PER_CHUNK, q_len)
        scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, start:stop].to(accum_dtype), kf) * scale
        keep = mask[:, :, start:stop].expand_as(scores)
        scores = scores.masked_fill(~keep, -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)
        # exp(-inf - (-inf)) is NaN; empty rows must come out as zeros instead.
        probs = torch.exp(scores - row_lse.unsqueeze(-1).masked_fill(row_lse.isinf().unsqueeze(-1), 0.0))
        out[:, :, start:stop] = torch.einsum("bhqk,bhkd->bhqd", probs, vf)
        lse[:, :, start:stop] = row_lse
    return out.to(q.dtype), lse.float()
