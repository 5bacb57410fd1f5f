"""Deterministic top-k selection with per-row budgets, without sorting a whole row and without host
synchronisation.

Rule: keep the ``k`` highest scores of a row; among scores equal to the k-th one, the lowest indices.
``torch.topk`` alone leaves ties to the implementation, so the boundary is settled here explicitly.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD = 1 << 62  # index padding: sorts after every real index


def select_top(scores: Tensor, k: Tensor, k_max: int) -> Tensor:
    """bool mask of the ``k[..., None]`` best entries of each row of ``scores`` (last dim).

    ``k`` broadcasts against ``scores.shape[:-1]`` and must satisfy ``1 <= k <= k_max <= scores.shape[-1]``.
    """
    values = torch.topk(scores, k_max, dim=-1, sorted=True).values
    k = k.expand(scores.shape[:-1])
    threshold = values.gather(-1, (k - 1).unsqueeze(-1))
    above = scores > threshold
    at = scores == threshold
    need = k.unsqueeze(-1) - above.sum(-1, keepdim=True, dtype=torch.int32)
    return above | (at & (torch.cumsum(at, -1, dtype=torch.int32) <= need))


def top_indices(scores: Tensor, k: Tensor, k_max: int) -> Tensor:
    """Indices of `select_top` ascending, ``[..., k_max]``, padded with `PAD` where a row keeps fewer.

    One ``topk`` over the row, of a key that orders exactly as the rule: the score's fp32 bits made
    monotone (``order``) in the high 32 bits, ``length - 1 - index`` in the low ones, so equal scores rank
    the lower index first. `select_top` and a second ``topk`` over every index gave the same result in
    more passes over ``[H, kv_len]`` (a cumulative sum among them, 86 us of an estimate at 32K on an H100,
    `experiments/results/profile_estimation.md`); the final sort is over ``k_max`` entries only.
    ``scores``: float32, or a 16-bit float (widened exactly); ``1 <= k <= k_max <= scores.shape[-1]``.
    """
    if scores.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"scores: expected float32, float16 or bfloat16, got {scores.dtype}")
    length = scores.shape[-1]
    index = torch.arange(length, device=scores.device)
    top = torch.topk((order(scores) << 32) | (length - 1 - index), k_max, dim=-1, sorted=True).values
    chosen = (length - 1) - (top & 0xFFFFFFFF)  # [..., k_max], best first
    kept = torch.arange(k_max, device=scores.device) < k.expand(scores.shape[:-1]).unsqueeze(-1)
    return torch.where(kept, chosen, PAD).sort(-1).values


def order(scores: Tensor) -> Tensor:
    """int64 keys in the scores' order: the fp32 bit patterns, with a negative number's magnitude bits
    flipped so that more negative ranks lower (``-0.0`` ranks as ``0.0``: it is added to ``0.0`` first)."""
    bits = (scores.float() + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
