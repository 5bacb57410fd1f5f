"""`BlockLayout` lists from a per-head tile grid on the GPU: one program per (head, query block) row.

`sparseattn.lowering.tile_grid` defines the lists with torch ops (its torch path is the oracle):
kept tiles below the causal diagonal are FULL, kept tiles crossing it PARTIAL with one of 8 causal
bitmap kinds, and vertical key columns no kept tile covers are gathered. There, every list costs a
grid-sized boolean, a ``nonzero_static`` over it and value arithmetic over the bound, over the whole
grid whatever the row keeps. Here each row is
scanned in place and writes its entries at its own offset. Rows with a known bound (PARTIAL tiles: two;
gathered columns: the head's column count; FULL tiles under a top-k budget) get fixed slots and one
pass; otherwise a counting pass and an exclusive prefix sum of the counts (torch, tiny) come first.
The geometry (which tiles are below or across the diagonal, which bitmap kind) is recomputed from the
lengths instead of being read.

No host synchronisation: the flat lists are allocated at a bound known from the shapes; slots past a
row's real end are left unwritten and no row points at them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Entries of a row scanned per step (a row of key blocks is 2048 long at 128K tokens in 64-wide tiles)
# and warps per row, the fastest measured (experiments/investigations/tune_row_kernels.py);
# ``chunk`` and ``num_warps`` override them (for tuning).
CHUNK = 256
WARPS = 1


@triton.jit
def store_row_tiles(
    kept, kb, g, q_len, kv_len, block, KIND_IDS, f_out, p_out, m_out, n_full, n_part, f_bound, WRITE: tl.constexpr
):
    """Append the kept key blocks ``kb`` [N] (ascending, after those already stored) of query block ``g``
    to its FULL list at ``f_out`` and its PARTIAL list at ``p_out`` / ``m_out``; returns the new counts.

    FULL entries past ``f_bound`` slots are counted but not stored (the caller checks the counts).
    With ``WRITE`` off it only counts.
    """
    first = g * block + (kv_len - q_len)  # bottom-right aligned position of the block's first query
    last = tl.minimum((g + 1) * block, q_len) - 1 + (kv_len - q_len)
    k_lo = kb * block
    k_hi = tl.minimum((kb + 1) * block, kv_len) - 1
    below = k_hi <= first  # every in-bounds pair causal: FULL
    full = kept & below
    part = kept & ~below & (k_lo <= last)  # crosses the diagonal: PARTIAL
    full_i = full.to(tl.int32)
    part_i = part.to(tl.int32)
    if WRITE:
        at = n_full + tl.cumsum(full_i, 0) - 1
        tl.store(f_out + at, kb.to(tl.int32), mask=full & (at < f_bound))
        # Bitmap kind (shift, q tail, k tail), numbered as tile_grid.causal_bitmaps numbers them.
        q_tail = (last - first + 1 < block).to(tl.int32)
        shifted = (first - k_lo < 0).to(tl.int32)
        k_tail = (k_hi - k_lo + 1 < block).to(tl.int32)
        kind = (shifted * 2 + q_tail) * 2 + k_tail
        mask_id = tl.load(KIND_IDS + kind, mask=part, other=0)
        at = n_part + tl.cumsum(part_i, 0) - 1
        tl.store(p_out + at, kb.to(tl.int32), mask=part)
        tl.store(m_out + at, mask_id.to(tl.int32), mask=part)
    return n_full + tl.sum(full_i, 0), n_part + tl.sum(part_i, 0)


@triton.jit
def _tile_rows_kernel(
    KEEP,
    KIND_IDS,
    F_NUM,
    F_START,
    F_IDX,
    P_NUM,
    P_START,
    P_IDX,
    P_MID,
    q_blocks,
    k_blocks,
    q_len,
    kv_len,
    block,
    f_bound,
    CHUNK: tl.constexpr,
    WRITE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (head, query block g)
    # Positions fit int32 (lengths < 2**31); int64 vector math would cost two instructions per op.
    g = (row % q_blocks).to(tl.int32)
    keep_row = KEEP + row * k_blocks
    f_out = F_IDX + tl.load(F_START + row)
    p_start = tl.load(P_START + row)
    n_full = tl.zeros([], tl.int32)
    n_part = tl.zeros([], tl.int32)
    for c0 in range(0, k_blocks, CHUNK):
        kb = c0 + tl.arange(0, CHUNK)  # [CHUNK] key block
        inside = kb < k_blocks
        kept = inside & (tl.load(keep_row + kb, mask=inside, other=0) != 0)
        # (the counting pass only needs the FULL counts: PARTIAL rows have fixed slots)
        n_full, n_part = store_row_tiles(
            kept,
            kb,
            g,
            q_len,
            kv_len,
            block,
            KIND_IDS,
            f_out,
            P_IDX + p_start,
            P_MID + p_start,
            n_full,
            n_part,
            f_bound,
            WRITE,
        )
    tl.store(F_NUM + row, n_full)
    tl.store(P_NUM + row, n_part)


@triton.jit
def _column_rows_kernel(
    KEYS,
    KEEP,
    C_NUM,
    C_START,
    C_IDX,
    q_blocks,
    k_blocks,
    n_keys,
    q_len,
    kv_len,
    block,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (head, query block g)
    head = row // q_blocks
    g = (row % q_blocks).to(tl.int32)
    last = tl.minimum((g + 1) * block, q_len) - 1 + (kv_len - q_len)
    keep_row = KEEP + row * k_blocks
    c_out = C_IDX + tl.load(C_START + row)
    count = tl.zeros([], tl.int32)
    for c0 in range(0, n_keys, CHUNK):
        slot = c0 + tl.arange(0, CHUNK)  # [CHUNK]
        inside = slot < n_keys
        key = tl.load(KEYS + head * n_keys + slot, mask=inside, other=kv_len)  # int64, padding >= kv_len
        reached = inside & (key < kv_len) & (key <= last)
        kb = tl.where(reached, key, 0).to(tl.int32) // block
        covered = tl.load(keep_row + kb, mask=reached, other=0) != 0
        valid = reached & ~covered
        valid_i = valid.to(tl.int32)
        tl.store(c_out + count + tl.cumsum(valid_i, 0) - 1, key.to(tl.int32), mask=valid)
        count += tl.sum(valid_i, 0)
    tl.store(C_NUM + row, count)


def _starts(counts: Tensor) -> Tensor:
    flat = counts.reshape(-1)
    return (torch.cumsum(flat, 0, dtype=torch.int64) - flat).view(counts.shape)


def _as_int8(keep: Tensor) -> Tensor:
    if keep.dtype != torch.bool or keep.dim() != 3:
        raise ValueError(f"keep: expected a bool tensor [H, QB, KB], got {keep.dtype} {tuple(keep.shape)}")
    return keep.contiguous().view(torch.int8)


def triton_tile_lists(
    keep: Tensor,
    kind_ids: Tensor,
    *,
    q_len: int,
    kv_len: int,
    block: int,
    row_bound: int | None = None,
    chunk: int = CHUNK,
    num_warps: int = WARPS,
) -> tuple[Tensor, ...]:
    """(full counts, starts, indices, partial counts, starts, indices, bitmap ids) of ``keep [H, QB, KB]``.

    Counts are ``[1, H, QB]`` int32, starts int64, flat lists int32; ``kind_ids [8]`` maps the
    diagonal-tile kind to its bitmap's row in ``tile_masks``. A row crosses the diagonal in at most
    two key blocks, so PARTIAL rows get two slots each; FULL rows get ``row_bound`` slots each when the
    caller knows such a bound (one pass: a row holding more is cut to it, and its count says so),
    else a counting pass sizes them exactly.
    """
    grid = _as_int8(keep)
    heads, q_blocks, k_blocks = grid.shape
    rows = heads * q_blocks
    dev = keep.device
    f_num = torch.empty(1, heads, q_blocks, dtype=torch.int32, device=dev)
    p_num = torch.empty_like(f_num)
    per_row = k_blocks if row_bound is None else min(row_bound, k_blocks)
    f_idx = torch.empty(max(rows * per_row, 1), dtype=torch.int32, device=dev)
    p_idx = torch.empty(max(2 * rows, 1), dtype=torch.int32, device=dev)
    p_mid = torch.empty_like(p_idx)
    p_start = (torch.arange(rows, device=dev) * 2).view(f_num.shape)
    kind_ids = kind_ids.to(device=dev, dtype=torch.int32)
    if not rows:
        return f_num, p_start, f_idx, p_num, p_start, p_idx, p_mid

    def scan(f_start: Tensor, write: bool) -> None:
        _tile_rows_kernel[(rows,)](
            grid,
            kind_ids,
            f_num,
            f_start,
            f_idx,
            p_num,
            p_start,
            p_idx,
            p_mid,
            q_blocks,
            k_blocks,
            q_len,
            kv_len,
            block,
            per_row,
            CHUNK=chunk,
            WRITE=write,
            num_warps=num_warps,
        )

    if row_bound is None:
        scan(p_start, False)
        f_start = _starts(f_num)
    else:
        f_start = (torch.arange(rows, device=dev) * per_row).view(f_num.shape)
    scan(f_start, True)
    return f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid


def triton_column_lists(
    keys: Tensor, keep: Tensor, *, q_len: int, kv_len: int, block: int, chunk: int = CHUNK, num_warps: int = WARPS
) -> tuple[Tensor, Tensor, Tensor]:
    """(counts [1, H, QB] int32, starts int64, flat keys int32): for each row, the keys of ``keys [H, V]``
    (ascending per head, padding ``>= kv_len``) the query block reaches causally and no kept tile covers."""
    grid = _as_int8(keep)
    heads, q_blocks, k_blocks = grid.shape
    if keys.dim() != 2 or keys.shape[0] != heads:
        raise ValueError(f"keys: expected [{heads}, V], got {tuple(keys.shape)}")
    keys = keys.to(torch.int64).contiguous()
    rows, n_keys = heads * q_blocks, keys.shape[1]
    dev = keep.device
    c_num = torch.empty(1, heads, q_blocks, dtype=torch.int32, device=dev)
    c_idx = torch.empty(max(rows * n_keys, 1), dtype=torch.int32, device=dev)
    # A row gathers at most its head's n_keys columns: fixed slots, one pass.
    c_start = (torch.arange(rows, device=dev) * n_keys).view(c_num.shape)
    if rows:
        _column_rows_kernel[(rows,)](
            keys,
            grid,
            c_num,
            c_start,
            c_idx,
            q_blocks,
            k_blocks,
            n_keys,
            q_len,
            kv_len,
            block,
            CHUNK=chunk,
            num_warps=num_warps,
        )
    return c_num, c_start, c_idx
