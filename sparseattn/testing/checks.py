"""Checks that hold for every pattern, written against the dense token truth.

A user who writes a new pattern gets all of them with one line (see `pattern_property_test`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from sparseattn.layout import BlockLayout, unpack_bits
from sparseattn.lowering import lower
from sparseattn.patterns import EMPTY, FULL, MaskContext, Pattern, Tiles
from sparseattn.testing.strategies import block_sizes, lengths


def exact_tile_classes(dense: Tensor, block_size: tuple[int, int]) -> Tensor:
    """The true class of every tile of a dense mask ``[H, q, kv]``: int8 ``[H, QB, KB]``."""
    bm, bn = block_size
    h, q_len, kv_len = dense.shape
    qb, kb = -(-q_len // bm), -(-kv_len // bn)
    padded = torch.zeros(h, qb * bm, kb * bn, dtype=torch.long)
    padded[:, :q_len, :kv_len] = dense.long()
    inside = torch.zeros_like(padded)
    inside[:, :q_len, :kv_len] = 1
    count = padded.view(h, qb, bm, kb, bn).sum((2, 4))
    area = inside.view(h, qb, bm, kb, bn).sum((2, 4))
    return torch.where(count == 0, 0, torch.where(count == area, 2, 1)).to(torch.int8)


def _all_tiles(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> Tiles:
    heads = pattern.num_heads or 1
    return Tiles.grid(MaskContext(q_len, kv_len, heads, *block_size), heads)


def check_classify(
    pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int], *, exact: bool = False
) -> None:
    """``classify`` is sound (never a wrong EMPTY or FULL), and equal to the truth when ``exact``."""
    tiles = _all_tiles(pattern, q_len, kv_len, block_size)
    got = pattern.classify(tiles).view(-1, tiles.ctx.num_q_blocks, tiles.ctx.num_kv_blocks)
    truth = exact_tile_classes(pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads), block_size)
    wrong_empty = (got == EMPTY) & (truth != EMPTY)
    wrong_full = (got == FULL) & (truth != FULL)
    assert not wrong_empty.any(), f"{pattern!r}: classified EMPTY but not empty at {wrong_empty.nonzero()[:5].tolist()}"
    assert not wrong_full.any(), f"{pattern!r}: classified FULL but not full at {wrong_full.nonzero()[:5].tolist()}"
    if exact:
        assert torch.equal(got, truth), f"{pattern!r}: classes differ at {(got != truth).nonzero()[:5].tolist()}"


def check_support(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> None:
    """``support`` contains every non-empty tile and ``support_size`` bounds its length."""
    heads = pattern.num_heads or 1
    ctx = MaskContext(q_len, kv_len, heads, *block_size)
    support = pattern.support(ctx)
    size = pattern.support_size(ctx)
    assert (support is None) == (size is None), f"{pattern!r}: support and support_size disagree on boundedness"
    if support is None or size is None:
        return
    assert len(support) <= size, f"{pattern!r}: support has {len(support)} tiles, support_size promised {size}"
    truth = exact_tile_classes(pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads), block_size)
    covered = torch.zeros(heads, ctx.num_q_blocks, ctx.num_kv_blocks, dtype=torch.bool)
    head = support.head if pattern.num_heads is not None else torch.zeros_like(support.head)
    covered[head, support.q_block, support.kv_block] = True
    covered = covered if pattern.num_heads is not None else covered[:1].expand(heads, -1, -1)
    missed = (truth != EMPTY) & ~covered
    assert not missed.any(), f"{pattern!r}: non-empty tiles outside the support: {missed.nonzero()[:5].tolist()}"


def check_row_breaks(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> None:
    """``row_breaks`` (when the pattern gives them): ``classify`` is constant between consecutive breaks."""
    heads = pattern.num_heads or 1
    ctx = MaskContext(q_len, kv_len, heads, *block_size)
    breaks = pattern.row_breaks(ctx)
    if breaks is None:
        return
    kb = ctx.num_kv_blocks
    assert breaks.dim() == 3 and breaks.shape[0] in (1, heads) and breaks.shape[1] == ctx.num_q_blocks, (
        f"{pattern!r}: row_breaks shape {tuple(breaks.shape)}, expected [1 or {heads}, {ctx.num_q_blocks}, P]"
    )
    classes = pattern.classify(Tiles.grid(ctx, heads)).view(heads, ctx.num_q_blocks, kb)
    edges = torch.cat(
        [breaks.expand(heads, -1, -1).clamp(0, kb), torch.tensor([0, kb - 1, kb]).expand(heads, ctx.num_q_blocks, 3)],
        -1,
    )
    # Each tile's run is the last break at or before it; a class change inside a run is an error.
    run_start = torch.zeros(heads, ctx.num_q_blocks, kb, dtype=torch.long)
    kv = torch.arange(kb)
    for p in range(edges.shape[-1]):
        e = edges[..., p : p + 1]
        run_start = torch.where(e <= kv, torch.maximum(run_start, e), run_start)
    first = torch.gather(classes, 2, run_start.clamp(max=kb - 1))
    changed = (classes != first).nonzero()
    assert changed.numel() == 0, (
        f"{pattern!r}: class changes inside a run of row_breaks at (head, q block, kv block) {changed[:5].tolist()}"
    )


def check_layout_invariants(layout: BlockLayout) -> None:
    """Rows ascending and unique, indices in range, FULL and PARTIAL disjoint, CSR offsets consistent."""
    kb_dim = layout.num_kv_blocks
    seen: dict[str, Tensor] = {}
    lists = (
        ("full_kv", layout.full_kv_indices, layout.full_entries),
        ("kv", layout.kv_indices, layout.partial_entries),
    )
    for which, indices, entries in lists:
        num = getattr(layout, f"{which}_num_blocks").reshape(-1).long()
        start = getattr(layout, f"{which}_start").reshape(-1).long()
        assert bool((num >= 0).all() & (start >= 0).all()), f"{which}: negative counts or starts"
        assert bool((start + num <= indices.numel()).all()), f"{which}_start + count runs past {which}_indices"
        assert bool(((indices >= 0) & (indices < kb_dim)).all()), f"{which}_indices out of [0, {kb_dim})"
        b, h, qb, slot = entries()
        row = (b * layout.num_heads + h) * layout.num_q_blocks + qb
        key = row * kb_dim + indices[slot].long()
        assert bool((key[1:] > key[:-1]).all()), f"{which}_indices not strictly ascending within rows"
        seen[which] = key
    assert not bool(torch.isin(seen["full_kv"], seen["kv"]).any()), "a tile is both FULL and PARTIAL"
    if layout.kv_mask_ids.numel():
        assert int(layout.kv_mask_ids.min()) >= 0 and int(layout.kv_mask_ids.max()) < layout.tile_masks.shape[0]
    if layout.tile_masks.shape[0]:
        distinct = layout.tile_masks.flatten(1)
        assert torch.unique(distinct, dim=0).shape[0] == distinct.shape[0], "tile_masks are not deduplicated"
        bits = unpack_bits(layout.tile_masks, layout.block_n)
        assert not bool((bits.sum((-1, -2)) == 0).any()), "a PARTIAL tile's bitmap is empty"
    if layout.col_indices is not None and layout.col_start is not None and layout.col_num is not None:
        b, h, qb, slot = layout.column_entries()
        assert bool((layout.col_start + layout.col_num <= layout.col_indices.numel()).all()), "col rows out of range"
        col = layout.col_indices[slot].long()
        assert bool(((col >= 0) & (col < layout.kv_len)).all()), "col_indices out of range"
        key = ((b * layout.num_heads + h) * layout.num_q_blocks + qb) * layout.kv_len + col
        assert bool((key[1:] > key[:-1]).all()), "col_indices not strictly ascending within rows"


def layouts_differ(a: BlockLayout, b: BlockLayout) -> str | None:
    """The first field in which two layouts differ, or None when they list the same tiles in the same
    order with the same bitmaps and columns (bitmap ids may be numbered differently; devices may differ)."""
    for name in ("full_kv_num_blocks", "full_kv_start", "full_kv_indices", "kv_num_blocks", "kv_start", "kv_indices"):
        if not torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()):
            return name
    if not torch.equal(a.tile_masks[a.kv_mask_ids.long()].cpu(), b.tile_masks[b.kv_mask_ids.long()].cpu()):
        return "tile_masks"
    for name in ("col_num", "col_start", "col_indices"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x.cpu(), y.cpu())):
            return name
    return None


def check_lowering(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> BlockLayout:
    """Lowering is exact (the layout's token mask is the pattern's) and the layout is well formed."""
    layout = lower(pattern, q_len, kv_len, block_size=block_size)
    check_layout_invariants(layout)
    truth = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads)
    got = layout.to_dense()[0].expand_as(truth)
    diff = (got != truth).nonzero()
    assert diff.numel() == 0, f"{pattern!r}: layout differs from the truth at (head, q, k) {diff[:5].tolist()}"
    return layout


def check_pattern(
    pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int], *, exact: bool = False
) -> None:
    """Every check above, for one pattern at one size."""
    check_classify(pattern, q_len, kv_len, block_size, exact=exact)
    check_support(pattern, q_len, kv_len, block_size)
    check_row_breaks(pattern, q_len, kv_len, block_size)
    check_lowering(pattern, q_len, kv_len, block_size)


def pattern_property_test(
    pattern_strategy: st.SearchStrategy[Pattern], *, exact: bool = False, max_examples: int = 60
) -> Callable[[], None]:
    """A ready pytest test: ``test_mine = pattern_property_test(st.builds(MyPattern, ...))``.

    It draws patterns, lengths (ragged, ``q_len <= kv_len``) and tilings, and runs `check_pattern`:
    classification sound (or exact with ``exact=True``), support covering, row breaks complete (when
    given), lowering exact.
    """

    @settings(max_examples=max_examples, deadline=None)
    @given(pattern=pattern_strategy, sizes=lengths(), block_size=block_sizes())
    def test(pattern: Pattern, sizes: tuple[int, int], block_size: tuple[int, int]) -> None:
        check_pattern(pattern, *sizes, block_size, exact=exact)

    return test
