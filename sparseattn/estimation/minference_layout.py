"""The exact `BlockLayout` of ``VerticalSlashIndices(form="minference")``, built from its merged runs.

Row block ``g`` (query positions ``[B*g, B*g + B)``) keeps the keys of its runs ``[start, end)`` and the
verticals below its last run's end, causally. A layout row of ``bm`` queries crosses one or more row
blocks; its *pieces* are those (tile row, row block) pairs, known from the lengths alone. Per head:

- a tile is computed when one of its pieces holds a run key that piece's last query reaches, or a
  vertical that some of its pieces keep and others (reaching it) drop: a gathered column serves every
  row of a tile row alike, so such a vertical needs the tile's bitmap;
- it is FULL when every piece's runs cover its keys and its first query reaches its last key; the other
  computed tiles are PARTIAL, with bitmaps built from each piece's column bits, once per distinct
  (column bits, row split, causal shift, rows) key. A PARTIAL tile that verticals complete is FULL;
- a vertical that every piece reaching it keeps is gathered where no computed tile covers it.

Run keys are counted through prefix sums of run lengths (a search in each row block's sorted runs), so
the cost is O(heads x pieces x (key blocks + verticals)) plus O(bm x bn) per distinct bitmap; no token
mask is evaluated over the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.estimation.topk import PAD
from sparseattn.layout import BlockLayout, pack_bits
from sparseattn.lowering.by_tiles import distinct_bitmaps
from sparseattn.lowering.grouping import group_rows
from sparseattn.lowering.tile_grid import index_table
from sparseattn.patterns.tiles import FULL


def run_keys_below(starts: Tensor, ends: Tensor, x: Tensor) -> Tensor:
    """Keys below ``x`` in the runs ``[starts, ends)`` (per last-dimension row: sorted, disjoint, empty
    padding after the runs); ``x`` holds the same leading dimensions as ``starts`` (or both are flat)."""
    j = torch.searchsorted(starts, x, right=True)  # runs starting at or before x: slots below j
    before = torch.nn.functional.pad((ends - starts).cumsum(-1), (1, 0))
    straddle = (ends.gather(-1, (j - 1).clamp(min=0)) - x).clamp(min=0).masked_fill(j == 0, 0)
    return before.gather(-1, j) - straddle


@dataclass(frozen=True)
class FlatRuns:
    """Every (head, row block)'s runs in one sorted list, keys shifted by ``stride`` per row block, for
    scattered queries (a batched search would copy each query's row of runs)."""

    starts: Tensor  # [H * G * S]
    ends: Tensor
    blocks: int  # G
    stride: int  # above every run end and query

    @classmethod
    def of(cls, starts: Tensor, ends: Tensor, stride: int) -> FlatRuns:
        heads, blocks, _ = starts.shape
        shift = torch.arange(heads * blocks, device=starts.device).view(heads, blocks, 1) * stride
        pad = starts == PAD
        # Padding becomes an empty run at the top of its own row block, so the flat list stays sorted.
        flat = lambda t: (torch.where(pad, stride - 1, t) + shift).reshape(-1)
        return cls(flat(starts), flat(ends), blocks, stride)

    def below(self, head: Tensor, block: Tensor, x: Tensor) -> Tensor:
        """Run keys below ``x`` in row block ``block`` of head ``head`` (broadcast together)."""
        base = (head * self.blocks + block) * self.stride
        return self._keys_before(x + base) - self._keys_before(base)

    def _keys_before(self, flat_key: Tensor) -> Tensor:
        """Run keys of the whole list below each flat key."""
        return run_keys_below(self.starts, self.ends, flat_key.reshape(-1).contiguous()).view(flat_key.shape)

    def contains(self, head: Tensor, block: Tensor, x: Tensor) -> Tensor:
        """Whether key ``x`` lies in a run of row block ``block`` of head ``head``."""
        return self.below(head, block, x + 1) > self.below(head, block, x)


@dataclass(frozen=True)
class Pieces:
    """The rows of each tile row, split by row block: piece ``p`` holds the query positions
    ``[lo[p], hi[p]]`` of tile row ``q_block[p]`` in row block ``block[p]`` (counted from the first
    block holding a query). Built on the host from the lengths alone."""

    q_block: Tensor  # [P]
    block: Tensor  # [P]
    lo: Tensor  # [P]
    hi: Tensor  # [P]
    count: Tensor  # [QB] pieces per tile row
    first: Tensor  # [QB] position of each tile row's first query
    rows: Tensor  # [QB] in-bounds rows of each tile row
    most: int  # the most pieces in a tile row

    @classmethod
    def of(cls, q_len: int, kv_len: int, block_m: int, row_block: int, device: torch.device) -> Pieces:
        offset = kv_len - q_len
        qb = torch.arange(-(-q_len // block_m))
        rows = (q_len - qb * block_m).clamp(max=block_m)
        first = qb * block_m + offset
        last = first + rows - 1
        count = last // row_block - first // row_block + 1
        q_block = torch.repeat_interleave(qb, count)
        block = first[q_block] // row_block + torch.arange(q_block.numel()) - (count.cumsum(0) - count)[q_block]
        lo = torch.maximum(first[q_block], block * row_block)
        hi = torch.minimum(last[q_block], block * row_block + row_block - 1)
        block = block - offset // row_block
        to = lambda t: t.to(device, non_blocking=True)
        return cls(to(q_block), to(block), to(lo), to(hi), to(count), to(first), to(rows), int(count.max()))

    def per_tile_row(self, values: Tensor) -> Tensor:
        """Sum of ``values`` [H, P, X] over each tile row's pieces: int32 [H, QB, X]."""
        out = torch.zeros(values.shape[0], self.count.numel(), values.shape[2], dtype=torch.int32, device=values.device)
        return out.index_add_(1, self.q_block, values.int())


def minference_layout(
    runs: tuple[Tensor, Tensor, Tensor],
    vertical: Tensor,
    *,
    q_len: int,
    kv_len: int,
    block_size: tuple[int, int],
    row_block: int,
) -> BlockLayout:
    """The layout of the runs ``(starts, ends, last_end)`` of `VerticalSlashIndices.minference_runs` (for
    the row blocks holding queries: from ``(kv_len - q_len) // row_block`` up to ``kv_len``) and the
    ``vertical`` [H, V] columns (ascending, `PAD` padded), on ``block_size`` tiles: exactly the minference form's mask, every computed tile holding a kept pair.

    Synchronises with the host: how many tiles are PARTIAL, and their bitmaps, depend on the data.
    """
    bm, bn = block_size
    pieces = Pieces.of(q_len, kv_len, bm, row_block, vertical.device)
    starts, ends, last_end = runs
    flat = FlatRuns.of(starts, ends, stride=kv_len + row_block * 2 + bn)
    computed, full = _run_tiles(starts, ends, flat, pieces, kv_len, bn)
    computed, gathered = _vertical_columns(starts, ends, last_end, vertical, pieces, computed, kv_len, bn)
    head, q_block, kv_block = computed.nonzero(as_tuple=True)
    is_full = full[head, q_block, kv_block]
    partial = (~is_full).nonzero().squeeze(1)
    tile_masks, mask_id, promoted = _partial_bitmaps(
        flat, index_table(vertical, kv_len), last_end, pieces, kv_len, block_size, row_block,
        head[partial], q_block[partial], kv_block[partial],
    )  # fmt: skip
    is_full[partial] = promoted
    ids = torch.zeros_like(head)
    ids[partial] = mask_id
    col_head, col_q_block, col_slot = gathered.nonzero(as_tuple=True)
    zeros = torch.zeros_like
    return BlockLayout.from_tiles(
        q_len=q_len,
        kv_len=kv_len,
        block_size=block_size,
        lead_shape=(1, vertical.shape[0]),
        batch=zeros(head),
        head=head,
        q_block=q_block,
        kv_block=kv_block,
        is_full=is_full,
        mask_id=ids,
        tile_masks=tile_masks,
        columns=(zeros(col_head), col_head, col_q_block, vertical[col_head, col_slot]),
    )


def _run_tiles(
    starts: Tensor, ends: Tensor, flat: FlatRuns, pieces: Pieces, kv_len: int, bn: int
) -> tuple[Tensor, Tensor]:
    """bool [H, QB, KB] each: tiles holding a run key some row reaches; tiles FULL by runs and causality."""
    heads = starts.shape[0]
    kb_dim = -(-kv_len // bn)
    edges = (torch.arange(kb_dim + 1, device=starts.device) * bn).clamp(max=kv_len)  # [KB + 1]
    at_edges = run_keys_below(starts, ends, edges.expand(*starts.shape[:2], -1).contiguous())  # [H, G, KB + 1]
    at_edges = at_edges[:, pieces.block]  # [H, P, KB + 1]
    head = torch.arange(heads, device=starts.device).view(-1, 1, 1)
    reach = flat.below(head, pieces.block.view(1, -1, 1), pieces.hi.view(1, -1, 1) + 1)  # [H, P, 1]
    lo, hi = at_edges[..., :-1], at_edges[..., 1:]
    # Run keys are monotone in x, so the keys a piece reaches in a block are min(hi, reach) - lo.
    held = pieces.per_tile_row(torch.minimum(hi, reach) > lo) > 0
    covered = pieces.per_tile_row(hi - lo == edges[1:] - edges[:-1]) == pieces.count.view(-1, 1)
    causal = edges[1:].view(1, -1) <= pieces.first.view(-1, 1) + 1  # [QB, KB]: the first query reaches all
    return held, covered & causal


def _vertical_columns(
    starts: Tensor,
    ends: Tensor,
    last_end: Tensor,
    vertical: Tensor,
    pieces: Pieces,
    computed: Tensor,
    kv_len: int,
    bn: int,
) -> tuple[Tensor, Tensor]:
    """(computed tiles, widened by verticals only some rows keep; bool [H, QB, V] verticals to gather)."""
    valid = vertical < kv_len
    valid[:, 1:] &= vertical[:, 1:] != vertical[:, :-1]  # a repeated column is gathered once
    key = vertical.clamp(max=kv_len)
    queries = key.unsqueeze(1).expand(-1, starts.shape[1], -1).contiguous()  # [H, G, V]
    in_run = run_keys_below(starts, ends, queries + 1) > run_keys_below(starts, ends, queries)
    kept = in_run | (queries < last_end.unsqueeze(-1))  # [H, G, V], causality aside
    reaches = valid.unsqueeze(1) & (key.unsqueeze(1) <= pieces.hi.view(1, -1, 1))  # [H, P, V]
    n_kept = pieces.per_tile_row(kept[:, pieces.block] & reaches)  # [H, QB, V]
    n_reach = pieces.per_tile_row(reaches)
    col_block = (key // bn).clamp(max=computed.shape[2] - 1).unsqueeze(1).expand_as(n_kept)
    mixed = (n_kept > 0) & (n_kept < n_reach)
    computed = computed | (torch.zeros_like(computed, dtype=torch.int32).scatter_add_(2, col_block, mixed.int()) > 0)
    return computed, (n_kept > 0) & (n_kept == n_reach) & ~computed.gather(2, col_block)


def _partial_bitmaps(
    flat: FlatRuns,
    columns: Tensor,
    last_end: Tensor,
    pieces: Pieces,
    kv_len: int,
    block_size: tuple[int, int],
    row_block: int,
    head: Tensor,
    q_block: Tensor,
    kv_block: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(distinct bitmaps [T, bm, bn/32], bitmap id, FULL after all) of the tiles ``(head, q_block, kv_block)``.

    ``columns`` bool [H, kv_len]: the vertical columns. A tile's bits are its pieces' column bits, cut by
    causality and the rows in bounds: equal (column bits, first position modulo ``row_block``, causal
    shift, rows) give equal bitmaps, so one bitmap is built per distinct key.
    """
    bm, bn = block_size
    dev = head.device
    if head.numel() == 0:
        none = torch.zeros(0, dtype=torch.long, device=dev)
        return torch.zeros(0, bm, bn // 32, dtype=torch.int32, device=dev), none, none.bool()
    first = pieces.first[q_block]
    piece = torch.arange(pieces.most, device=dev)
    block = (first // row_block - pieces.first[0] // row_block).view(-1, 1) + piece  # [n, m]
    real = piece < pieces.count[q_block].view(-1, 1)
    block = block.clamp(max=last_end.shape[1] - 1)
    key = kv_block.view(-1, 1, 1) * bn + torch.arange(bn, device=dev)  # [n, 1, bn]
    key_c = key.clamp(max=kv_len)
    h3, b3 = head.view(-1, 1, 1), block.unsqueeze(-1)
    vert = columns[h3, key_c.clamp(max=kv_len - 1)] & (key < last_end[h3, b3])
    bits = (flat.contains(h3, b3, key_c) | vert) & real.unsqueeze(-1) & (key < kv_len)  # [n, m, bn]
    shift = (first - kv_block * bn).clamp(-bm, bn)  # the first row keeps columns up to the shift
    rows = pieces.rows[q_block]
    tile_key = torch.cat([pack_bits(bits).flatten(1), torch.stack([first % row_block, shift, rows], 1)], 1)
    by_key, reps = group_rows(tile_key)
    r, c = torch.arange(bm, device=dev).view(1, -1, 1), torch.arange(bn, device=dev).view(1, 1, -1)

    def tile_bits(part: slice) -> tuple[Tensor, Tensor]:
        rep = reps[part]
        row_piece = ((first[rep] % row_block).view(-1, 1) + r.view(1, -1)) // row_block  # [T, bm]
        row_piece = row_piece.clamp(max=pieces.most - 1).unsqueeze(-1).expand(-1, -1, bn)
        inside = (r < rows[rep].view(-1, 1, 1)) & (key[rep] < kv_len)
        tile = bits[rep].gather(1, row_piece) & (c <= shift[rep].view(-1, 1, 1) + r)
        return tile & inside, inside.expand(tile.shape)

    distinct, group_id, true_class = distinct_bitmaps(reps.numel(), tile_bits)
    return distinct, group_id[by_key], true_class[by_key] == FULL
