"""Grouping equal rows of an integer matrix: tile keys, then bitmaps by content.

``torch.unique(dim=0)`` does this exactly, but on a GPU at 128K tokens it made the bitmap dedup a
lowering's slowest step, and
on the CPU it compares rows one pair at a time. Here each row is hashed to one int64, the hashes are
grouped by a one-dimensional ``torch.unique`` (a radix sort), and the grouping is then checked
row by row against each group's first member: a collision, however unlikely, falls back to
lexicographic stable sorts, so the result is always exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseattn.memo import shared_cache

# Fixed odd 64-bit multipliers: the hash is a weighted sum modulo 2**64 (int64 arithmetic wraps).
_SEED = 0x5EED


@shared_cache(maxsize=32)
def _weights(width: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(_SEED)
    return (torch.randint(-(2**62), 2**62, (width,), generator=gen, dtype=torch.int64) * 2 + 1).to(device)


def first_of_each(inverse: Tensor, groups: int) -> Tensor:
    """Index of the first row of each group."""
    n = inverse.numel()
    first = torch.full((groups,), n, dtype=torch.long, device=inverse.device)
    return first.scatter_reduce(0, inverse, torch.arange(n, device=inverse.device), reduce="amin")


def group_rows(rows: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(group id of each row, first row of each group)`` for an integer ``rows`` [n, K]: equal rows
    share an id, ids are dense from 0. ``weights`` [K] overrides the hash multipliers (tests force
    collisions with them)."""
    rows = rows.long()
    if rows.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=rows.device)
        return empty, empty
    w = _weights(rows.shape[1], rows.device) if weights is None else weights.to(rows.device, torch.long)
    hashes, inverse = torch.unique((rows * w).sum(1), return_inverse=True)
    first = first_of_each(inverse, hashes.numel())
    if bool((rows != rows[first[inverse]]).any()):
        return _group_rows_exactly(rows)
    return inverse, first


def _group_rows_exactly(rows: Tensor) -> tuple[Tensor, Tensor]:
    """The collision fallback: K stable sorts, one column each, order the rows lexicographically."""
    order = torch.arange(rows.shape[0], device=rows.device)
    for col in reversed(range(rows.shape[1])):
        order = order[torch.argsort(rows[order, col], stable=True)]
    ordered = rows[order]
    starts = torch.ones(rows.shape[0], dtype=torch.long, device=rows.device)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(dim=1).long()
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(starts, 0) - 1
    return inverse, first_of_each(inverse, int(inverse.max()) + 1)
