"""Lowering by row segments: one classification per run of equal tiles, in fixed-shape device ops.

Along a query-block row the tile class of an analytic pattern changes at only a few kv blocks, its
`row_breaks` (a causal row: where the diagonal starts; a window: its two edges). Between two breaks
every tile has one class, so one probe tile per run classifies the whole row:

1. breaks become a ``[rows, S]`` grid of runs ``[lo, hi)`` (empty runs included, so every shape is
   known in advance) and each run is classified by its first tile: O(rows x breaks) work, whatever
   the number of tiles;
2. FULL runs are counted per row and expanded into the FULL lists by one ``repeat_interleave``;
3. PARTIAL runs are short (band edges, the diagonal): their tiles get bitmaps as in the per-tile path.

Everything runs on the layout's device, except a compiled program's breaks, which depend on the
lengths alone and are cheaper on the host (``run_grid``). On a GPU the per-tile path costs a boolean selection (a host
sync) per step and work proportional to the tiles; here the host waits only for a few sizes (the
list lengths, the number of bitmap groups).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.lowering.by_tiles import partial_bitmaps
from sparseattn.lowering.gathered import gathered_columns
from sparseattn.lowering.intervals import IntervalProgram
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.columns import Columns
from sparseattn.patterns.tiles import FULL, PARTIAL, MaskContext, Tiles, expand_runs, run_values


def run_grid(pattern: Pattern, ctx: MaskContext, heads: int | None) -> tuple[Tensor, Tensor] | None:
    """``(lo, hi)`` [rows, S] of every run, rows ``head * QB + q_block``, runs ascending within a row
    (some empty); None when the pattern has no breaks."""
    # A program's breaks depend on the lengths and tiling alone, and are a few dozen operations on
    # [QB, P] integers: on the host they cost less than as device launches, and
    # one copy moves them. The sort stays on the device: on the host, sorting thousands of short rows
    # cost more than the whole lowering. Other patterns may hold device tensors and stay on the device.
    on_host = isinstance(pattern, IntervalProgram) and ctx.device.type != "cpu"
    breaks = pattern.row_breaks(replace(ctx, device=torch.device("cpu")) if on_host else ctx)
    kb = ctx.num_kv_blocks
    if breaks is None:
        return None
    fixed = torch.tensor([0, kb - 1, kb], dtype=torch.long, device=breaks.device)
    edges = torch.cat([breaks.clamp(0, kb), fixed.expand(*breaks.shape[:2], 3)], dim=-1)
    edges = edges.to(ctx.device).sort(dim=-1).values
    edges = edges.expand(heads or 1, ctx.num_q_blocks, -1).reshape(-1, edges.shape[-1])
    return edges[:, :-1], edges[:, 1:]


def _csr(row: Tensor, rows: int, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(count, start) per row of entries sorted by row; ``weight`` counts an entry that many times."""
    count = torch.zeros(rows, dtype=torch.long, device=row.device)
    count.scatter_add_(0, row, torch.ones_like(row) if weight is None else weight)
    return count, torch.cumsum(count, 0) - count


def lower_by_segments(
    pattern: Pattern, tiled: Pattern, columns: list[Columns], ctx: MaskContext, heads: int | None
) -> BlockLayout | None:
    """Layout of ``pattern`` = ``tiled`` | gathered ``columns`` (see `split_gathered`) on ``ctx.device``;
    None when ``tiled`` does not describe its rows by breaks."""
    grid = run_grid(tiled, ctx, heads)
    if grid is None:
        return None
    lo, hi = grid
    qbn, kbn = ctx.num_q_blocks, ctx.num_kv_blocks
    rows, width = lo.shape
    row = torch.arange(rows * width, device=ctx.device) // width
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    probes = Tiles(ctx, row // qbn, row % qbn, lo.clamp(max=kbn - 1))
    cls = tiled.classify(probes)
    length = hi - lo
    f_len, p_len = length * (cls == FULL), length * (cls == PARTIAL)
    n_full, n_part = (int(x) for x in torch.stack([f_len, p_len]).sum(1).tolist())

    # PARTIAL tiles, one by one, under the whole pattern: the bitmaps give each its true class, as
    # gathered columns may fill a tile up and Kleene logic may call an empty or full tile PARTIAL.
    run, p_kb = expand_runs(lo, p_len, n_part)
    p_row = row[run]
    p_tiles = Tiles(ctx, p_row // qbn, p_row % qbn, p_kb)
    if isinstance(tiled, IntervalProgram):
        tiled.share_classes(probes, p_tiles, run)
    tile_masks, mask_id, true_class = partial_bitmaps(pattern, p_tiles)
    f_row, f_lo = row, lo
    if n_part and bool((true_class != PARTIAL).any()):
        promoted, kept = true_class == FULL, true_class == PARTIAL
        f_row, f_lo = torch.cat([row, p_row[promoted]]), torch.cat([lo, p_kb[promoted]])
        f_len = torch.cat([f_len, torch.ones_like(p_kb[promoted])])
        order = torch.argsort(f_row * (kbn + 1) + f_lo, stable=True)
        f_row, f_lo, f_len = f_row[order], f_lo[order], f_len[order]
        n_full += int(promoted.sum())
        p_row, p_kb, mask_id = p_row[kept], p_kb[kept], mask_id[kept]
        f_num, f_start = _csr(f_row, rows, f_len)
        p_num, p_start = _csr(p_row, rows)
    else:
        # Runs are laid out row by row, [rows, width]: a row's count is the sum of its runs.
        f_num, p_num = torch.stack([f_len, p_len]).view(2, rows, width).sum(2)
        f_start, p_start = torch.cumsum(f_num, 0) - f_num, torch.cumsum(p_num, 0) - p_num
    f_idx = run_values(f_lo, f_len, n_full)
    lead = (1, heads or 1, qbn)
    col_num = col_start = col_idx = None
    if columns:
        nonempty = f_len > 0
        run_lo, run_row = f_lo[nonempty], f_row[nonempty]
        starts, ends = run_row * (kbn + 1) + run_lo, run_lo + f_len[nonempty]
        partial_keys = p_row * kbn + p_kb

        def covered(head: Tensor, q_block: Tensor, kv_block: Tensor) -> Tensor:
            r = head * qbn + q_block
            in_part = torch.isin(r * kbn + kv_block, partial_keys)
            if not starts.numel():
                return in_part
            # The last FULL run starting at or before the tile; it covers the tile if it is in the
            # same row and reaches past it.
            pos = (torch.searchsorted(starts, r * (kbn + 1) + kv_block, right=True) - 1).clamp(min=0)
            return in_part | ((run_row[pos] == r) & (run_lo[pos] <= kv_block) & (kv_block < ends[pos]))

        _, c_head, c_qb, c_col = gathered_columns(ctx, heads or 1, columns, covered)
        c_row = c_head * qbn + c_qb
        col_idx = c_col[torch.argsort(c_row * ctx.kv_len + c_col)].to(torch.int32)
        col_num, col_start = (t.view(lead) for t in _csr(c_row, rows))
        col_num = col_num.to(torch.int32)
    return BlockLayout(
        q_len=ctx.q_len,
        kv_len=ctx.kv_len,
        block_m=ctx.block_m,
        block_n=ctx.block_n,
        full_kv_num_blocks=f_num.to(torch.int32).view(lead),
        full_kv_start=f_start.view(lead),
        full_kv_indices=f_idx.to(torch.int32),
        kv_num_blocks=p_num.to(torch.int32).view(lead),
        kv_start=p_start.view(lead),
        kv_indices=p_kb.to(torch.int32),
        kv_mask_ids=mask_id.to(torch.int32),
        tile_masks=tile_masks,
        col_num=col_num,
        col_start=col_start,
        col_indices=col_idx,
    )
