"""Analytic lowering of a `Pattern` to a `BlockLayout`, in O(non-empty tiles).

1. Candidate tiles come from ``pattern.support`` (a superset of the non-empty tiles), never from the
   whole q x kv plane unless the pattern gives no bound (a bare ``~x``, ``Full``, a user pattern).
2. ``pattern.classify`` sorts them into EMPTY / PARTIAL / FULL.
3. PARTIAL tiles are grouped by ``pattern.tile_key`` (plus their in-bounds extents); one bitmap is
   evaluated per group from the token truth, then bitmaps are deduplicated by content.
4. Vertical lines written as ``Causal() & Columns(...)`` inside a top-level union are gathered column
   by column where no computed tile covers them, instead of turning every tile they cross into a
   PARTIAL tile. Inside computed tiles their bits are part of the tile's bitmap, so nothing is counted
   twice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout, _pack_bits
from sparseattn.patterns.algebra import And, Or
from sparseattn.patterns.base import EMPTY, FULL, MaskContext, Pattern, Tiles, tile_bits
from sparseattn.patterns.columns import Columns
from sparseattn.patterns.per_head import PerHead
from sparseattn.patterns.primitives import Causal
from sparseattn.patterns.shapes import Composite

_BITMAP_CHUNK = 2048


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
    ``tiled`` is None when the columns are the whole pattern.
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


def _first_of_each(inverse: Tensor, groups: int) -> Tensor:
    """Index of the first member of each group."""
    n = inverse.numel()
    first = torch.full((groups,), n, dtype=torch.long, device=inverse.device)
    return first.scatter_reduce(0, inverse, torch.arange(n, device=inverse.device), reduce="amin")


def _bitmaps(pattern: Pattern, tiles: Tiles) -> tuple[Tensor, Tensor, Tensor]:
    """(packed distinct bitmaps [T, bm, bn/32], each tile's bitmap id, each tile's true class).

    Kleene logic may call a tile PARTIAL that is in fact empty or full (``Causal() & ~Causal()``);
    its bitmap says so, and the true class lets lowering drop or promote it. Ids of such tiles are
    meaningless.
    """
    ctx = tiles.ctx
    if len(tiles) == 0:
        empty = torch.zeros(0, ctx.block_m, ctx.block_n // 32, dtype=torch.int32, device=ctx.device)
        none = torch.zeros(0, dtype=torch.long, device=ctx.device)
        return empty, none, none
    extents = torch.stack([tiles.q_stop - tiles.q_start, tiles.k_stop - tiles.k_start], dim=1)
    keys = torch.cat([pattern.tile_key(tiles), extents], dim=1)
    _, by_key = torch.unique(keys, dim=0, return_inverse=True)
    groups = int(by_key.max()) + 1
    reps = tiles.select(_first_of_each(by_key, groups))
    rows = torch.arange(ctx.block_m, device=ctx.device)
    cols = torch.arange(ctx.block_n, device=ctx.device)
    words, classes = [], []
    for s in range(0, groups, _BITMAP_CHUNK):
        bits, inside = tile_bits(pattern, reps.select(slice(s, s + _BITMAP_CHUNK)), rows, cols)
        kept = bits.sum((-1, -2))
        classes.append(torch.where(kept == 0, 0, torch.where(kept == inside.sum((-1, -2)), 2, 1)))
        words.append(_pack_bits(bits))
    packed, true_class = torch.cat(words), torch.cat(classes)
    partial = true_class == 1
    distinct, by_content = torch.unique(packed[partial].flatten(1), dim=0, return_inverse=True)
    group_id = torch.zeros(groups, dtype=torch.long, device=ctx.device)
    group_id[partial] = by_content
    return distinct.reshape(-1, ctx.block_m, ctx.block_n // 32), group_id[by_key], true_class[by_key]


def _gathered(
    ctx: MaskContext, heads: int, columns: list[Columns], computed: Tiles
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(batch, head, q_block, key) of every column a q block reaches causally and no computed tile covers."""
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
    covered_keys = computed.key().sort().values
    probe = Tiles(ctx, head, qb, col // ctx.block_n).key()
    hit = torch.zeros_like(probe, dtype=torch.bool)
    if covered_keys.numel():
        pos = torch.searchsorted(covered_keys, probe).clamp(max=covered_keys.numel() - 1)
        hit = covered_keys[pos] == probe
    head, col, qb = head[~hit], col[~hit], qb[~hit]
    return torch.zeros_like(head), head, qb, col


def lower(
    pattern: Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_size: tuple[int, int] = (64, 64),
    num_heads: int | None = None,
    device: torch.device | str | None = None,
    gather_columns: bool = True,
) -> BlockLayout:
    """Lower ``pattern`` for ``q_len`` queries against ``kv_len`` keys (default ``q_len``).

    The layout broadcasts over heads (head dimension 1) unless the pattern depends on the head, in
    which case it has one entry per head (``num_heads`` is checked against the pattern's own count).
    """
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern: expected a Pattern, got {type(pattern).__name__}")
    kv_len = q_len if kv_len is None else kv_len
    bm, bn = block_size
    if bm < 1 or bn < 32 or bn % 32:
        raise ValueError(f"block_size: expected (block_m >= 1, block_n a positive multiple of 32), got {block_size}")
    pattern._resolve_heads(num_heads)
    if isinstance(pattern, PerHead) and all(p.num_heads is None for p in pattern.patterns):
        # Heads with equal patterns share one lowering and one copy of its rows.
        distinct: dict[Pattern, int] = {}
        group = [distinct.setdefault(p, len(distinct)) for p in pattern.patterns]
        layouts = [
            lower(p, q_len, kv_len, block_size=block_size, device=device, gather_columns=gather_columns)
            for p in distinct
        ]
        return BlockLayout.share_rows(layouts, group)
    heads = pattern.num_heads
    ctx = MaskContext(q_len, kv_len, heads or 1, bm, bn, torch.device(device or "cpu"))
    tiled, columns = split_gathered(pattern) if gather_columns else (pattern, [])

    if tiled is None:
        computed = Tiles(ctx, *(torch.zeros(0, dtype=torch.long, device=ctx.device),) * 3)
    else:
        support = tiled.support(ctx)
        candidates = support if support is not None else Tiles.grid(ctx, heads or 1)
        if heads is not None and tiled.num_heads is None:
            candidates = candidates.for_heads(heads)
        computed = candidates.select(tiled.classify(candidates) != EMPTY)
    cls = pattern.classify(computed).long()
    partial = cls != FULL
    tile_masks, partial_ids, partial_class = _bitmaps(pattern, computed.select(partial))
    cls[partial] = partial_class
    mask_id = torch.zeros(len(computed), dtype=torch.long, device=ctx.device)
    mask_id[partial] = partial_ids
    nonempty = cls != EMPTY
    computed, cls, mask_id = computed.select(nonempty), cls[nonempty], mask_id[nonempty]
    partial = cls != FULL
    gathered = _gathered(ctx, heads or 1, columns, computed) if columns else None
    return BlockLayout.from_tiles(
        q_len=q_len,
        kv_len=kv_len,
        block_size=(bm, bn),
        lead_shape=(1, heads or 1),
        batch=torch.zeros_like(computed.head),
        head=computed.head,
        q_block=computed.q_block,
        kv_block=computed.kv_block,
        is_full=~partial,
        mask_id=mask_id,
        tile_masks=tile_masks,
        columns=gathered,
    )
