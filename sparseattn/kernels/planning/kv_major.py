"""The kv-major (transposed) view of a `BlockLayout`, which the backward's dK/dV kernel walks.

The layout lists, per (batch|1, head|1, query block) row, the key blocks it computes. The dK/dV kernel
owns one key block and needs the opposite: for each (batch|1, head|1, key block), the query blocks
whose rows hold it

- as a FULL tile (``full_q_*``),
- as a PARTIAL tile, with the tile's bitmap id (``part_q_*`` and ``part_mask_ids``),
- through gathered key columns that fall inside the key block (``col_q_*``): each entry names the
  query block, the first slot of those columns in the layout's ``col_indices`` and how many there are
  (at most ``block_n``: a row's columns are distinct and ascending, so a key block's are contiguous).

Every list is compressed sparse rows over the lead ``[B|1, H|1, KB]`` (``*_num``, ``*_start`` and a flat
ascending index list), like the layout itself. It is built with torch ops on the layout's device, one
sort of the layout's entries per list: O(tiles log tiles), never a query-blocks x key-blocks grid.
The layout's own ``entries`` costs one host sync per list (the total entry count).

`dq_order` gives the launch order of the dQ kernel, heaviest rows first, so the long ones (a
triangle's last query rows) start early and the short ones fill in; the dK/dV kernel's work list, which
also splits its longest programs, is `dkdv_work.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.memo import attached


@dataclass(frozen=True)
class KvMajor:
    """Per (lead batch, lead head, key block) lists of query blocks; see the module docstring.

    Shapes (``B, H`` as in the layout, ``KB = layout.num_kv_blocks``):

    - ``full_q_num`` [B, H, KB] int32, ``full_q_start`` [B, H, KB] int64, ``full_q_indices`` [nnz_full] int32
    - ``part_q_num``, ``part_q_start``, ``part_q_indices`` [nnz_partial] and ``part_mask_ids`` [nnz_partial]
      int32 (row of ``layout.tile_masks``)
    - ``col_q_num``, ``col_q_start``, ``col_q_indices`` [G] int32, ``col_slot`` [G] int64 (offset into
      ``layout.col_indices``) and ``col_count`` [G] int32, ``G`` the (row, key block) groups of gathered
      columns; empty lists when the layout gathers nothing.
    """

    full_q_num: Tensor
    full_q_start: Tensor
    full_q_indices: Tensor
    part_q_num: Tensor
    part_q_start: Tensor
    part_q_indices: Tensor
    part_mask_ids: Tensor
    col_q_num: Tensor
    col_q_start: Tensor
    col_q_indices: Tensor
    col_slot: Tensor
    col_count: Tensor

    def tiles_per_key_block(self) -> Tensor:
        """[B, H, KB] int64: the (query block, key block) tiles each key block's program visits."""
        return self.full_q_num.long() + self.part_q_num.long() + self.col_q_num.long()


def _transpose(
    num_kv_blocks: int, num_q_blocks: int, lead: tuple[int, int], b: Tensor, h: Tensor, qb: Tensor, kb: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CSR over (b, h, kb) of the query blocks ``qb``: (num [B, H, KB] int32, start int64, sorted qb int32,
    the permutation that sorted the entries)."""
    b_dim, h_dim = lead
    column = (b.long() * h_dim + h.long()) * num_kv_blocks + kb.long()
    order = torch.argsort(column * num_q_blocks + qb.long())
    counts = torch.bincount(column, minlength=b_dim * h_dim * num_kv_blocks)
    starts = torch.cumsum(counts, 0) - counts
    shape = (b_dim, h_dim, num_kv_blocks)
    return counts.to(torch.int32).reshape(shape), starts.reshape(shape), qb[order].to(torch.int32), order


def build_kv_major(layout: BlockLayout) -> KvMajor:
    """The kv-major view of ``layout`` (not memoised; `kv_major` is)."""
    lead = (layout.batch_size, layout.num_heads)
    qbs, kbs = layout.num_q_blocks, layout.num_kv_blocks
    b, h, qb, slot = layout.full_entries()
    f_num, f_start, f_idx, _ = _transpose(kbs, qbs, lead, b, h, qb, layout.full_kv_indices[slot])
    b, h, qb, slot = layout.partial_entries()
    p_num, p_start, p_idx, order = _transpose(kbs, qbs, lead, b, h, qb, layout.kv_indices[slot])
    p_mid = layout.kv_mask_ids[slot][order].to(torch.int32)
    dev = layout.device
    if layout.col_indices is not None:
        b, h, qb, slot = layout.column_entries()
        kb = layout.col_indices[slot].long() // layout.block_n
        # Entries come row by row with ascending columns, so one row's columns in one key block are
        # adjacent: a group starts wherever the (row, key block) pair changes.
        group_key = ((b * lead[1] + h) * qbs + qb) * kbs + kb
        first = torch.ones_like(group_key, dtype=torch.bool)
        first[1:] = group_key[1:] != group_key[:-1]
        starts = torch.nonzero(first).squeeze(1)
        ends = torch.cat([starts[1:], torch.tensor([group_key.numel()], device=dev)])
        c_num, c_start, c_idx, order = _transpose(kbs, qbs, lead, b[starts], h[starts], qb[starts], kb[starts])
        c_slot = slot[starts][order]
        c_count = (ends - starts)[order].to(torch.int32)
    else:
        c_num = torch.zeros(*lead, kbs, dtype=torch.int32, device=dev)
        c_start = torch.zeros(*lead, kbs, dtype=torch.int64, device=dev)
        c_idx = torch.zeros(0, dtype=torch.int32, device=dev)
        c_slot = torch.zeros(0, dtype=torch.int64, device=dev)
        c_count = torch.zeros(0, dtype=torch.int32, device=dev)
    return KvMajor(f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid, c_num, c_start, c_idx, c_slot, c_count)


def kv_major(layout: BlockLayout) -> KvMajor:
    """The kv-major view of ``layout``, built once per layout and kept as long as it lives."""
    return attached(layout, "kv_major", lambda: build_kv_major(layout))


def build_dq_order(layout: BlockLayout, batch: int, heads: int) -> Tensor:
    """[B * Hq * QB] int32: the dQ kernel's flat (batch, head, query block) rows, most tiles (and gathered
    column chunks) first; ties keep flat order, so neighbouring programs share K/V through L2 (not
    memoised; `dq_order` is)."""
    qbs = layout.num_q_blocks
    row_cost = layout.full_kv_num_blocks.long() + layout.kv_num_blocks.long()
    if layout.col_num is not None:
        row_cost = row_cost + -(-layout.col_num.long() // layout.block_n)
    dq_cost = row_cost.expand(batch, heads, qbs).reshape(-1)
    return torch.argsort(dq_cost, descending=True, stable=True).to(torch.int32)


def dq_order(layout: BlockLayout, batch: int, heads: int) -> Tensor:
    """`build_dq_order`, memoised on the layout per (batch, heads)."""
    return attached(layout, ("dq_order", batch, heads), lambda: build_dq_order(layout, batch, heads))
