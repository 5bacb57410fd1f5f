"""Vertical lines lowered as gathered key columns instead of the PARTIAL tiles they cross.

A union term ``Causal() & Columns(...)`` keeps whole key columns below the diagonal. Computing every
tile such a column crosses would cost a tile per (column block, query block); gathering the column's
K/V rows costs one key per query block. Inside tiles the pattern computes anyway, the column's bits are
part of the tile's bitmap, so only the rest is gathered and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sparseattn.patterns.base import And, Or, Pattern
from sparseattn.patterns.columns import Columns
from sparseattn.patterns.primitives import Causal
from sparseattn.patterns.shapes import Composite
from sparseattn.patterns.tiles import MaskContext


def _causal_columns(term: Pattern) -> Columns | None:
    """The `Columns` of a ``Causal() & Columns(...)`` term (either order), else None."""
    if isinstance(term, And) and len(term.terms) == 2:
        a, b = term.terms
        if isinstance(a, Causal) and isinstance(b, Columns):
            return b
        if isinstance(b, Causal) and isinstance(a, Columns):
            return a
    return None


def split_gathered(pattern: Pattern) -> tuple[Pattern | None, list[Columns]]:
    """Write ``pattern`` as ``tiled | (Causal() & c1) | (Causal() & c2) ...``; returns ``(tiled, [c1, ...])``.

    Recognised forms: a union with such terms, and ``Causal() & (union with Columns terms)``.
    ``tiled`` is None when the columns are the whole pattern. ``tiled`` is a subset of ``pattern``, so
    a tile FULL under ``tiled`` is FULL under ``pattern``.
    """
    while isinstance(pattern, Composite):
        pattern = pattern.expression
    if isinstance(pattern, Or):
        columns = [c for t in pattern.terms if (c := _causal_columns(t)) is not None]
        rest = [t for t in pattern.terms if _causal_columns(t) is None]
    elif isinstance(pattern, And) and len(pattern.terms) == 2 and any(isinstance(t, Causal) for t in pattern.terms):
        inner = pattern.terms[1] if isinstance(pattern.terms[0], Causal) else pattern.terms[0]
        if isinstance(inner, Columns):
            return None, [inner]
        if not isinstance(inner, Or):
            return pattern, []
        columns = [t for t in inner.terms if isinstance(t, Columns)]
        others = [t for t in inner.terms if not isinstance(t, Columns)]
        rest = [Causal() & (others[0] if len(others) == 1 else Or(tuple(others)))] if others else []
    else:
        return pattern, []
    if not columns:
        return pattern, []
    tiled = None if not rest else rest[0] if len(rest) == 1 else Or(tuple(rest))
    return tiled, columns


def gathered_columns(
    ctx: MaskContext, heads: int, columns: list[Columns], covered: Callable[[Tensor, Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(batch, head, q_block, key) of every column a q block reaches causally and no computed tile covers.

    ``covered(head, q_block, kv_block)`` says, for each entry, whether the layout computes that tile.
    """
    sets: list[set[int]] = [set() for _ in range(heads)]
    for c in columns:
        for h, values in enumerate(c.head_sets(heads)):
            sets[h].update(v for v in values if v < ctx.kv_len)
    per_head = [torch.tensor(sorted(s), dtype=torch.long, device=ctx.device) for s in sets]
    head = torch.cat([torch.full_like(p, h) for h, p in enumerate(per_head)])
    col = torch.cat(per_head)
    last = torch.clamp((torch.arange(ctx.num_q_blocks, device=ctx.device) + 1) * ctx.block_m, max=ctx.q_len)
    last = last - 1 + ctx.offset
    # All (column, q block) pairs, then keep those some row of the block reaches (k <= last q_pos).
    qb = torch.arange(ctx.num_q_blocks, device=ctx.device).repeat(col.numel())
    head, col = head.repeat_interleave(ctx.num_q_blocks), col.repeat_interleave(ctx.num_q_blocks)
    keep = col <= last[qb]
    head, col, qb = head[keep], col[keep], qb[keep]
    free = ~covered(head, qb, col // ctx.block_n)
    head, col, qb = head[free], col[free], qb[free]
    return torch.zeros_like(head), head, qb, col
