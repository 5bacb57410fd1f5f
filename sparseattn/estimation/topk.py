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
    """Indices of `select_top` ascending, ``[..., k_max]``, padded with `PAD` where a row keeps fewer:
    the first ``k`` of `ranked_indices`. ``1 <= k <= k_max <= scores.shape[-1]``."""
    return first_ascending(ranked_indices(scores, k_max), k)


def ranked_indices(scores: Tensor, k_max: int) -> Tensor:
    """``[..., k_max]``: the indices of each row's ``k_max`` best entries, best first (higher score, then
    lower index), so that the first ``k`` of them are `select_top`'s ``k``.

    One ``topk`` over the row, of a key that orders exactly as the rule: the score's fp32 bits made
    monotone (`order`) in the high 32 bits, ``length - 1 - index`` in the low ones, so equal scores rank
    the lower index first. `select_top` and a second ``topk`` over every index gave the same selection in
    more passes over ``[H, kv_len]`` (a cumulative sum among them, 86 us of an estimate at 32K on an H100,
    `experiments/results/profile_estimation.md`). ``scores``: float32, or a 16-bit float (widened exactly).
    """
    if scores.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"scores: expected float32, float16 or bfloat16, got {scores.dtype}")
    length = scores.shape[-1]
    index = torch.arange(length, device=scores.device)
    top = torch.topk((order(scores) << 32) | (length - 1 - index), k_max, dim=-1, sorted=True).values
    return (length - 1) - (top & 0xFFFFFFFF)


def first_ascending(ranked: Tensor, k: Tensor) -> Tensor:
    """The first ``k[...]`` entries of each row of ``ranked`` ``[..., k_max]``, ascending, padded with `PAD`."""
    kept = torch.arange(ranked.shape[-1], device=ranked.device) < k.expand(ranked.shape[:-1]).unsqueeze(-1)
    return torch.where(kept, ranked, PAD).sort(-1).values


def order(scores: Tensor) -> Tensor:
    """int64 keys in the scores' order: the fp32 bit patterns, with a negative number's magnitude bits
    flipped so that more negative ranks lower (``-0.0`` ranks as ``0.0``: it is added to ``0.0`` first)."""
    bits = (scores.float() + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
