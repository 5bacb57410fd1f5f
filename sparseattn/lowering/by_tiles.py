"""Lowering tile by tile: classify every candidate tile of the pattern's support.

The general path, for any pattern: it needs only ``support`` (or the whole plane when there is none)
and ``classify``. It is also the oracle of the faster row-segment path (``by_segments.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout, pack_bits
from sparseattn.lowering.gathered import gathered_columns
from sparseattn.lowering.grouping import group_rows
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.columns import Columns
from sparseattn.patterns.tiles import EMPTY, FULL, PARTIAL, MaskContext, Tiles, tile_bits

_BITMAP_CHUNK = 2048


def partial_bitmaps(pattern: Pattern, tiles: Tiles) -> tuple[Tensor, Tensor, Tensor]:
    """(packed distinct bitmaps [T, bm, bn/32], each tile's bitmap id, each tile's true class).

    Tiles are grouped by ``pattern.tile_key`` (plus their in-bounds extents) and one bitmap is
    evaluated per group from the token truth, then bitmaps are deduplicated by content. Kleene logic
    may call a tile PARTIAL that is in fact empty or full (``Causal() & ~Causal()``); its bitmap says
    so, and the true class lets lowering drop or promote it. Ids of such tiles are meaningless.
    """
    ctx = tiles.ctx
    if len(tiles) == 0:
        empty = torch.zeros(0, ctx.block_m, ctx.block_n // 32, dtype=torch.int32, device=ctx.device)
        none = torch.zeros(0, dtype=torch.long, device=ctx.device)
        return empty, none, none
    keys = pattern.tile_key(tiles)
    if ctx.q_len % ctx.block_m or ctx.kv_len % ctx.block_n:
        # Tail tiles are cut short, and their bits with them: equal keys must mean equal extents.
        extents = torch.stack([tiles.q_last - tiles.q_start, tiles.k_last - tiles.k_start], dim=1)
        keys = torch.cat([keys, extents], dim=1)
    by_key, first = group_rows(keys)
    reps = tiles.select(first)
    rows = torch.arange(ctx.block_m, device=ctx.device)
    cols = torch.arange(ctx.block_n, device=ctx.device)
    distinct, group_id, true_class = distinct_bitmaps(
        first.numel(), lambda part: tile_bits(pattern, reps.select(part), rows, cols)
    )
    return distinct, group_id[by_key], true_class[by_key]


def distinct_bitmaps(count: int, bits_of: Callable[[slice], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(packed distinct PARTIAL bitmaps [T, bm, bn/32], each tile's bitmap id, each tile's true class) of
    ``count`` tiles whose ``(bits, in-bounds bits)`` ``bits_of(slice)`` gives, a chunk at a time.

    Tiles that turn out EMPTY or FULL keep id 0 (never read); equal contents share one bitmap.
    """
    words, classes = [], []
    for s in range(0, count, _BITMAP_CHUNK):
        bits, inside = bits_of(slice(s, s + _BITMAP_CHUNK))
        kept = bits.sum((-1, -2))
        classes.append((kept > 0).long() + (kept == inside.sum((-1, -2))))
        words.append(pack_bits(bits))
    packed, true_class = torch.cat(words), torch.cat(classes)
    partial = true_class == PARTIAL
    partial_packed = packed[partial]
    by_content, first_of_content = group_rows(partial_packed.flatten(1))
    group_id = torch.zeros(count, dtype=torch.long, device=packed.device).masked_scatter_(partial, by_content)
    return partial_packed[first_of_content], group_id, true_class


def lower_by_tiles(
    pattern: Pattern, tiled: Pattern | None, columns: list[Columns], ctx: MaskContext, heads: int | None
) -> BlockLayout:
    """Layout of ``pattern`` = ``tiled`` | gathered ``columns`` (see `split_gathered`), on ``ctx.device``."""
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
    tile_masks, partial_ids, partial_class = partial_bitmaps(pattern, computed.select(partial))
    cls[partial] = partial_class
    mask_id = torch.zeros(len(computed), dtype=torch.long, device=ctx.device)
    mask_id[partial] = partial_ids
    nonempty = cls != EMPTY
    computed, cls, mask_id = computed.select(nonempty), cls[nonempty], mask_id[nonempty]
    partial = cls != FULL
    gathered = None
    if columns:
        covered_keys = computed.key().sort().values

        def covered(head: Tensor, q_block: Tensor, kv_block: Tensor) -> Tensor:
            probe = Tiles(ctx, head, q_block, kv_block).key()
            if not covered_keys.numel():
                return torch.zeros_like(probe, dtype=torch.bool)
            pos = torch.searchsorted(covered_keys, probe).clamp(max=covered_keys.numel() - 1)
            return covered_keys[pos] == probe

        gathered = gathered_columns(ctx, heads or 1, columns, covered)
    return BlockLayout.from_tiles(
        q_len=ctx.q_len,
        kv_len=ctx.kv_len,
        block_size=(ctx.block_m, ctx.block_n),
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
