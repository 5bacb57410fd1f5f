"""Deterministic top-k selection with per-row budgets, without sorting and without host synchronisation.

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
    """Indices of `select_top` ascending, ``[..., k_max]``, padded with `PAD` where a row keeps fewer."""
    keep = select_top(scores, k, k_max)
    index = torch.arange(scores.shape[-1], device=scores.device)
    # The k_max smallest kept indices: largest values of -index among kept entries (all distinct).
    ranked = torch.where(keep, -index, -PAD)
    chosen = -torch.topk(ranked, k_max, dim=-1, sorted=True).values
    return chosen
