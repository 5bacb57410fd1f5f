"""Reading padded batches out of the 4-D boolean masks transformers builds for SDPA.

A padded sequence is a contiguous run ``[start, stop)`` of real tokens (left or right padding); its
mask is then exactly ``start <= k < stop and k <= q``. Anything else (packed sequences, custom masks)
is refused rather than guessed at.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sequence_spans(attention_mask: Tensor) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of real tokens per batch row, from a ``[B, 1|H, S, S]`` bool mask (True = attend)."""
    if (
        attention_mask.dtype != torch.bool
        or attention_mask.dim() != 4
        or attention_mask.shape[-1] != attention_mask.shape[-2]
    ):
        raise ValueError(
            "attention_mask: sparse prefill expects the square 4-D boolean mask transformers builds for SDPA, got "
            f"dtype {attention_mask.dtype} and shape {tuple(attention_mask.shape)}"
        )
    size = attention_mask.shape[-1]
    pos = torch.arange(size, device=attention_mask.device)
    causal = pos.view(-1, 1) >= pos.view(1, -1)
    spans = []
    for b in range(attention_mask.shape[0]):
        # Every query row, padded or not, sees exactly the real keys at or before it; the last row sees them all.
        real = attention_mask[b, 0, -1]
        count = int(real.sum())
        start = int(real.int().argmax()) if count else 0
        stop = start + count
        expected = causal & (pos >= start).view(1, -1) & (pos < stop).view(1, -1)
        if count == 0 or not torch.equal(attention_mask[b, 0], expected):
            raise ValueError(
                f"attention_mask: row {b} is not a causal mask over one contiguous run of real tokens (left or right "
                "padding); sparse prefill refuses packed sequences and custom masks rather than guess"
            )
        spans.append((start, stop))
    return spans


def is_plain_continuation(attention_mask: Tensor | None, q_len: int, kv_len: int) -> bool:
    """True when ``q_len`` queries continuing a cache of ``kv_len`` keys attend causally to every key, with no
    padding: no mask, or the ``[B, 1|H, q_len, kv_len]`` boolean mask ``k <= q_idx + kv_len - q_len`` in
    every row (what transformers builds for an unpadded chunk over a dynamic cache). Static caches and
    padded batches give other masks."""
    if attention_mask is None:
        return True
    if attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[-2:] != (q_len, kv_len):
        return False
    q = torch.arange(q_len, device=attention_mask.device).view(-1, 1)
    k = torch.arange(kv_len, device=attention_mask.device).view(1, -1)
    return bool((attention_mask == (k <= q + (kv_len - q_len))).all())
