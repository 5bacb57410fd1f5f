"""`BlockLayout` from a dense per-head grid of kept tiles, on the GPU, without host synchronisation.

Dynamic patterns decide, per (head, query block, key block), whether a tile is computed; causality then
splits kept tiles into FULL ones and PARTIAL ones on the diagonal. Every output is allocated at a size
known from the shapes alone (an upper bound), so nothing waits for the device:

- CSR lists are filled by row scans on CUDA (`sparseattn.kernels.lowering.triton_tile_lists`) and with
  ``torch.nonzero_static`` here (the oracle, and the CPU path); slots past a list's real end are never
  pointed at by any row (``*_start`` is the exclusive prefix sum of the counts);
- ``tile_masks`` is the small table of distinct causal bitmaps the lengths allow (at most 8), built on
  the host from the lengths alone; a layout may leave some of them unreferenced.

Cost is O(heads x query blocks x key blocks) elementwise work, with small constants.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout, pack_bits
from sparseattn.memo import shared_cache


@lru_cache(maxsize=64)
def causal_bitmaps(block: int, q_len: int, kv_len: int) -> tuple[Tensor, Tensor]:
    """(distinct non-empty bitmaps [T, block, block // 32], id of each of the 8 diagonal-tile kinds).

    A PARTIAL tile crosses the causal diagonal, so its first query sits ``c = q_start - k_start``
    positions after its first key with ``c`` in ``[-(block - 1), block - 2]`` and ``c = kv_len - q_len``
    modulo ``block``: two shifts at most. With a short last query block and a short last key block
    that makes 8 kinds, ``(shift, q tail, k tail)``; they depend on the lengths only, so the table is
    built on the host once per shape and no device value is ever read back.
    """
    c0 = (kv_len - q_len) % block
    rows = torch.arange(block).view(-1, 1)
    cols = torch.arange(block).view(1, -1)
    tail_rows, tail_cols = q_len - (-(-q_len // block) - 1) * block, kv_len - (-(-kv_len // block) - 1) * block
    kinds = []
    for shift in (c0, c0 - block):
        for row_limit in (block, tail_rows):
            for col_limit in (block, tail_cols):
                kinds.append((shift + rows - cols >= 0) & (rows < row_limit) & (cols < col_limit))
    words = pack_bits(torch.stack(kinds)).reshape(len(kinds), -1)
    nonempty = torch.stack(kinds).flatten(1).any(1)
    distinct, ids = torch.unique(words[nonempty], dim=0, return_inverse=True)
    kind_ids = torch.zeros(len(kinds), dtype=torch.long)
    kind_ids[nonempty] = ids
    return distinct.reshape(-1, block, block // 32), kind_ids


@shared_cache(maxsize=64)
def causal_bitmaps_on(block: int, q_len: int, kv_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """`causal_bitmaps` copied to ``device`` once per shape (bitmaps, int32 kind ids): a copy per lowering
    would cost two host-to-device transfers from pageable memory, and rule out capturing the lowering in
    a CUDA graph. Shared tensors, never modified in place."""
    masks, kind_ids = causal_bitmaps(block, q_len, kv_len)
    return masks.to(device), kind_ids.to(device=device, dtype=torch.int32)


def _csr(select: Tensor, bound: int, *values: Callable[[Tensor], Tensor]) -> tuple[Tensor, ...]:
    """(counts [1, H, QB] int32, starts [1, H, QB] int64, then one flat [bound] int32 list per ``values``)
    of ``select [H, QB, X]``.

    Each of ``values`` maps flat positions of selected entries to the stored values (computed, not
    gathered from an expanded grid, so no grid-sized value tensor is ever built); the selection is
    scanned once for all of them.
    """
    counts = select.sum(-1, dtype=torch.int32)
    starts = torch.cumsum(counts.reshape(-1), 0, dtype=torch.int64) - counts.reshape(-1)
    where = torch.nonzero_static(select.reshape(-1), size=bound, fill_value=-1).view(-1)
    found = where >= 0
    flats = tuple(torch.where(found, value(where.clamp(min=0)), 0).to(torch.int32) for value in values)
    return (counts.unsqueeze(0), starts.view(counts.shape).unsqueeze(0), *flats)


def layout_from_tile_grid(
    keep: Tensor,
    *,
    q_len: int,
    kv_len: int,
    block: int,
    columns: Tensor | None = None,
    max_tiles_per_row: int | None = None,
) -> BlockLayout:
    """Layout computing ``keep [H, QB, KB]`` tiles (each intersected with ``k <= q_pos``) plus gathered columns.

    ``columns`` ``[H, C]``: each head's key positions, ascending, padding ``>= kv_len``; a query block
    gathers those it reaches (``k <=`` its last position) that no kept tile covers, so nothing counts
    twice. ``max_tiles_per_row``, when the caller knows one (a top-k budget), bounds the FULL list's
    allocation; it must hold, since entries past the bound would be dropped.

    On CUDA the lists come from `sparseattn.kernels.lowering.triton_tile_lists` (rows scanned in place); the
    torch path below is its oracle and the CPU path.
    """
    heads, qb_dim, kb_dim = keep.shape
    device = keep.device
    kind_ids = causal_bitmaps_on(block, q_len, kv_len, device)[1]
    bound = heads * qb_dim * (kb_dim if max_tiles_per_row is None else min(kb_dim, max_tiles_per_row))
    if keep.is_cuda:
        from sparseattn.kernels.lowering.triton_tile_lists import triton_column_lists, triton_tile_lists

        lists = triton_tile_lists(keep, kind_ids, q_len=q_len, kv_len=kv_len, block=block, row_bound=max_tiles_per_row)
        cols = None if columns is None else triton_column_lists(columns, keep, q_len=q_len, kv_len=kv_len, block=block)
    else:
        lists = torch_tile_lists(keep, kind_ids, q_len=q_len, kv_len=kv_len, block=block, bound=bound)
        cols = None if columns is None else torch_column_lists(columns, keep, q_len=q_len, kv_len=kv_len, block=block)
    if max_tiles_per_row is not None:
        # Entries past the bound were not stored: fail the next synchronising call rather than lose them.
        torch._assert_async(lists[0].max() <= max_tiles_per_row)
    return layout_from_lists(lists, cols, q_len=q_len, kv_len=kv_len, block=block)


def layout_from_lists(
    lists: tuple[Tensor, ...], cols: tuple[Tensor, ...] | None, *, q_len: int, kv_len: int, block: int
) -> BlockLayout:
    """The device-built `BlockLayout` of FULL/PARTIAL lists (counts, starts, indices[, bitmap ids]) and
    optional gathered-column lists, whose partial tiles use `causal_bitmaps`'s bitmaps."""
    tile_masks, _ = causal_bitmaps_on(block, q_len, kv_len, lists[0].device)
    f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid = lists
    c_num, c_start, c_idx = (None, None, None) if cols is None else cols
    return BlockLayout(
        q_len=q_len,
        kv_len=kv_len,
        block_m=block,
        block_n=block,
        full_kv_num_blocks=f_num,
        full_kv_start=f_start,
        full_kv_indices=f_idx,
        kv_num_blocks=p_num,
        kv_start=p_start,
        kv_indices=p_idx,
        kv_mask_ids=p_mid,
        tile_masks=tile_masks,
        col_num=c_num,
        col_start=c_start,
        col_indices=c_idx,
        device_built=True,
    )


def torch_tile_lists(
    keep: Tensor, kind_ids: Tensor, *, q_len: int, kv_len: int, block: int, bound: int
) -> tuple[Tensor, ...]:
    """(full counts, starts, indices, partial counts, starts, indices, bitmap ids) with torch ops."""
    heads, qb_dim, kb_dim = keep.shape
    device = keep.device
    first, last, k_lo, k_hi = tile_bounds(q_len, kv_len, block, device)
    first, last, k_lo, k_hi = first.view(-1, 1), last.view(-1, 1), k_lo.view(1, -1), k_hi.view(1, -1)
    below = k_hi <= first  # every in-bounds pair of the tile is causal
    full = keep & below

    # A query block crosses the causal diagonal in at most two adjacent key blocks, the same for every
    # head: find them once on the [QB, KB] plane, then read only those two entries of each head's grid.
    diagonal = (k_lo <= last) & ~below  # [QB, KB]
    across = diagonal.sum(1, keepdim=True)  # [QB, 1] in {0, 1, 2}
    cand = diagonal.int().argmax(1, keepdim=True) + torch.arange(2, device=device)  # [QB, 2]
    cand_ok = torch.arange(2, device=device) < across  # [QB, 2]
    cand = cand.clamp(max=kb_dim - 1)
    partial = keep.gather(2, cand.expand(heads, -1, -1)) & cand_ok  # [H, QB, 2]

    c_first, c_last = k_lo.view(-1)[cand], k_hi.view(-1)[cand]  # [QB, 2] key range of each candidate
    second_shift = ((first - c_first) < 0).long()  # c0 - block rather than c0
    q_tail = (last - first + 1 < block).long()
    k_tail = (c_last - c_first + 1 < block).long()
    mask_id = kind_ids[(second_shift * 2 + q_tail) * 2 + k_tail]  # [QB, 2]

    f_num, f_start, f_idx = _csr(full, bound, lambda w: w % kb_dim)
    pair = qb_dim * 2
    p_num, p_start, p_idx, p_mid = _csr(
        partial, heads * pair, lambda w: cand.reshape(-1)[w % pair], lambda w: mask_id.reshape(-1)[w % pair]
    )
    return f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid


def torch_column_lists(
    keys: Tensor, keep: Tensor, *, q_len: int, kv_len: int, block: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(counts, starts, flat keys) of the gathered columns with torch ops."""
    qb_dim = keep.shape[1]
    keys = keys.to(keep.device)
    _, last, _, _ = tile_bounds(q_len, kv_len, block, keep.device)
    inside = (keys < kv_len).unsqueeze(1)
    kb = (keys.clamp(max=kv_len - 1) // block).unsqueeze(1).expand(-1, last.numel(), -1)
    valid = inside & (keys.unsqueeze(1) <= last.view(1, -1, 1)) & ~keep.gather(2, kb)  # [H, QB, C]
    per_row = valid.shape[-1]
    c_num, c_start, c_idx = _csr(valid, valid.numel(), lambda w: keys[w // (qb_dim * per_row), w % per_row])
    return c_num, c_start, c_idx


@shared_cache(maxsize=64)
def tile_bounds(q_len: int, kv_len: int, block: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(first, last) in-bounds query position of each query block and (first, last) key of each key block.

    Memoised per shape and device, since every dynamic lowering asks for them several times and each ask
    costs a dozen small kernel launches; the tensors are shared, so callers never modify them in place.
    """
    qb = torch.arange(-(-q_len // block), device=device)
    kb = torch.arange(-(-kv_len // block), device=device)
    offset = kv_len - q_len
    return (
        qb * block + offset,
        torch.clamp((qb + 1) * block, max=q_len) - 1 + offset,
        kb * block,
        torch.clamp((kb + 1) * block, max=kv_len) - 1,
    )


def index_table(indices: Tensor, size: int) -> Tensor:
    """bool ``[H, size]``: which positions each head's index row holds (padding and overflow dropped)."""
    heads = indices.shape[0]
    table = torch.zeros(heads, size + 1, dtype=torch.bool, device=indices.device)
    table.scatter_(1, indices.clamp(max=size), True)
    return table[:, :size]
