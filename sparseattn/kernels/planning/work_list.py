"""Work list for the block-sparse forward kernel: which program computes which slice of which row.

A *row* is one (batch, query head, query block). Its kv work is the concatenation of its FULL tiles and
then its PARTIAL tiles, ``n = full + partial`` tiles, followed by its gathered columns. Rows are very
unequal (a triangle's last query block spans the whole prompt while other blocks touch a handful of
tiles), so the list is built to keep every multiprocessor busy until the end:

- a row longer than ``max_chunk`` tiles is cut into near-equal chunks, each run by its own program;
  each chunk writes a normalised partial output and its lse to fp32 scratch, and a small merge kernel
  combines them (``triton_merge.py``). The chunk that ends the row also does the gathered columns.
- items are ordered heaviest first, so long items start early and short ones fill the tail; ties keep
  (batch, query block, head) order, so the query heads that share a kv head run side by side and reuse
  its K/V through L2.
- each item carries its chunk's first two runs of consecutive FULL blocks (`run_ends`), so the kernel
  can walk them without loading block ids.

Everything is built with torch ops on the layout's device. Splitting rows costs one host sync (how many
items and split rows there are); deciding whether and how finely to split costs one more (`RowStats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.memo import attached

# Columns for a work item (int32): batch, (first) query head, query block, layout row (flat index into
# the layout's [B|1, H|1, QB] lead), first and end tile of the chunk, scratch slot (-1: write the
# output), the slot distance between the packed heads' partials (the row's number of chunks), and the
# row's FULL count, total tile count, and offsets into the FULL and PARTIAL lists. With the row facts
# in the item a program starts with one round of independent loads instead of the chain item -> row
# -> list. Timings did not move either way; the kernel just needs four fewer list arguments. The last four give the chunk's first two runs of consecutive FULL
# blocks (see `run_ends`): end position and base of each, so the kernel walks them with no load at all.
WORK_FIELDS = 16
# Chunks are never cut shorter than this: below it the scratch round trip costs more than it saves.
MIN_CHUNK_TILES = 16
# Aim for about this many chunk-lengths of work per multiprocessor.
WAVES = 4
# Balancing pays only when the longest row is this many times the mean row or more; on near-uniform
# rows (dense causal, streaming, A-shape) the plain grid order measured faster, on unequal rows
# (triangle, per-head mixtures) the balanced order did.
UNEQUAL_ROWS = 2.0


@dataclass(frozen=True)
class WorkList:
    """``items`` [W, 16] int32 (see ``WORK_FIELDS``); ``merges`` [R, 5] int32 rows (batch, head, query block,
    first scratch slot, number of chunks) for the (row, head) pairs that were split; ``num_slots``
    scratch slots; ``pack`` query heads per item (they share one kv head and the layout row)."""

    items: Tensor
    merges: Tensor
    num_slots: int
    max_chunk: int
    pack: int = 1


def run_ends(indices: Tensor) -> Tensor:
    """For a flat FULL list of P key blocks, ``[P + 1]`` int64: entry ``p`` is the first position ``>= p``
    that starts a run of consecutive blocks (a block that is not its predecessor's plus one), or P.

    So the run holding position ``p`` ends at ``run_ends(indices)[p + 1]``. A kernel walking a run
    computes each tile's block from the run's first one instead of loading it, which lets Triton's
    software pipeliner issue the K/V loads stages ahead (a load whose address comes from a load inside
    the loop is not pipelined; see experiments/results/kernel_notes.md). Runs are cut by content, not
    by row, so rows that share
    storage or abut still work: a walk clips each run to its own row. One reversed running minimum,
    on the device, without a host sync (a scatter of run starts measured slow on device-built layouts:
    every non-start wrote one shared slot).
    """
    n = indices.numel()
    position = torch.arange(n + 1, device=indices.device)
    starts = torch.ones(n + 1, dtype=torch.bool, device=indices.device)
    if n > 1:
        starts[1:n] = indices[1:] != indices[:-1] + 1
    start_or_end = torch.where(starts, position, n)
    return torch.flip(torch.cummin(torch.flip(start_or_end, (0,)), 0).values, (0,))


@dataclass(frozen=True)
class RowStats:
    """Tiles per layout row, over every (batch, head, query block) row the layout stores: the longest,
    the mean and the sum."""

    longest: int
    mean: float
    total: int

    @staticmethod
    def of(layout: BlockLayout) -> RowStats:
        """Read back in one host sync."""
        n_tiles = layout.full_kv_num_blocks.long() + layout.kv_num_blocks.long()
        longest, total = torch.stack([n_tiles.max(), n_tiles.sum()]).tolist()
        return RowStats(int(longest), total / n_tiles.numel(), int(total))

    @property
    def unequal(self) -> bool:
        """True when the longest row holds more than ``UNEQUAL_ROWS`` times the mean row's tiles."""
        return self.longest > UNEQUAL_ROWS * self.mean

    def max_chunk(self, repeats: int, num_sms: int) -> int:
        """Longest chunk, in tiles, for ``repeats`` copies of the rows (broadcast batch x heads, per
        packed program): about 1 / (WAVES * num_sms) of all the work, at least MIN_CHUNK_TILES."""
        return max(MIN_CHUNK_TILES, -(-self.total * repeats // (WAVES * max(num_sms, 1))))


def build_work_list(
    layout: BlockLayout,
    batch: int,
    heads: int,
    *,
    max_chunk: int,
    heavy_first: bool = True,
    pack: int = 1,
    runs: bool = True,
) -> WorkList:
    """Work list for ``batch`` x ``heads`` query heads over ``layout``; ``max_chunk <= 0`` never splits.

    ``runs=False`` leaves the run fields zero, for launches that read every FULL block by index: the
    planning passes over the whole FULL list, which on a large device-built layout is not free.

    ``pack > 1`` makes each item run ``pack`` consecutive query heads (the layout must not depend on
    the head): a split chunk then writes one scratch slot per head, ``chunks`` slots apart, so each
    head's partials stay contiguous for the merge.
    """
    lb, lh, qb_dim = layout.full_kv_num_blocks.shape
    if pack > 1 and (lh != 1 or heads % pack):
        raise ValueError(f"pack: {pack} heads per program needs a head-independent layout and heads divisible by it")
    dev = layout.device
    units = heads // pack
    n_tiles = (layout.full_kv_num_blocks.long() + layout.kv_num_blocks.long()).expand(batch, units, qb_dim)
    lrow = torch.arange(lb * lh * qb_dim, device=dev).view(lb, lh, qb_dim).expand(batch, units, qb_dim)
    col_cost = torch.zeros_like(n_tiles)
    if layout.col_num is not None:
        col_cost = (-(-layout.col_num.long() // layout.block_n)).expand(batch, units, qb_dim)
    b = torch.arange(batch, device=dev).view(-1, 1, 1).expand(batch, units, qb_dim)
    h = (torch.arange(units, device=dev) * pack).view(1, -1, 1).expand(batch, units, qb_dim)
    qb = torch.arange(qb_dim, device=dev).view(1, 1, -1).expand(batch, units, qb_dim)

    # Row order (batch, query block, head): heads innermost so GQA siblings sit next to each other.
    def rows(x: Tensor) -> Tensor:
        return x.permute(0, 2, 1).reshape(-1)

    n_tiles, lrow, col_cost, b, h, qb = map(rows, (n_tiles, lrow, col_cost, b, h, qb))
    if max(layout.full_kv_indices.numel(), layout.kv_indices.numel()) >= 2**31:
        raise ValueError("layout: over 2**31 tiles in one list; work items hold list offsets as int32")
    n_full = layout.full_kv_num_blocks.reshape(-1).long()[lrow]
    full_start = layout.full_kv_start.reshape(-1)[lrow]
    part_start = layout.kv_start.reshape(-1)[lrow]
    if max_chunk > 0:
        chunks = (-(-n_tiles // max_chunk)).clamp(min=1)
        # The one host sync: how many items, and how many rows are split.
        n_items, n_split = torch.stack([chunks.sum(), (chunks > 1).sum()]).tolist()
        row_of = torch.repeat_interleave(torch.arange(n_tiles.numel(), device=dev), chunks, output_size=n_items)
    else:  # one item per row: every size is known on the host, nothing below waits for the device
        chunks = torch.ones_like(n_tiles)
        row_of = torch.arange(n_tiles.numel(), device=dev)
    size = -(-n_tiles // chunks)  # near-equal chunks
    first_item = torch.cumsum(chunks, 0) - chunks
    part = torch.arange(row_of.numel(), device=dev) - first_item[row_of]
    t0 = part * size[row_of]
    t1 = torch.minimum(t0 + size[row_of], n_tiles[row_of])

    split_rows = chunks > 1
    slots_of_row = torch.where(split_rows, chunks * pack, 0)
    slot_start = torch.cumsum(slots_of_row, 0) - slots_of_row
    split = split_rows[row_of]
    slot = torch.where(split, slot_start[row_of] + part, -1)
    stride = torch.where(split, chunks[row_of], 0)
    # The item's FULL positions [lo, hi) in the flat list, its first two runs within them, each as an end
    # position and a base (block minus position, so a tile's block is base + position), relative to
    # the row's start. Positions past the second run are read by index.
    blocks = layout.full_kv_indices.long()
    if runs and blocks.numel():
        ends = run_ends(blocks)
        row_start = full_start[row_of]
        lo = row_start + torch.minimum(t0, n_full[row_of])
        hi = row_start + torch.minimum(t1, n_full[row_of])
        fields = []
        for _ in range(2):
            end = torch.where(lo < hi, torch.minimum(ends[(lo + 1).clamp(max=blocks.numel())], hi), lo)
            base = blocks[lo.clamp(max=blocks.numel() - 1)] - (lo - row_start)
            fields += [end - row_start, base]
            lo = end
    else:  # the kernel walks nothing by runs: empty first and second runs at position 0
        fields = [torch.zeros_like(t0)] * 4
    items = torch.stack(
        [
            *(x[row_of] for x in (b, h, qb, lrow)),
            t0,
            t1,
            slot,
            stride,
            *(x[row_of] for x in (n_full, n_tiles, full_start, part_start)),
            *fields,
        ],
        dim=1,
    )

    if heavy_first:
        # +1 per item: even an empty row costs a launch and a store.
        cost = (t1 - t0) + torch.where(t1 == n_tiles[row_of], col_cost[row_of], 0) + 1
        items = items[torch.argsort(cost, descending=True, stable=True)]

    if max_chunk > 0:
        # The split rows, in row order, without a boolean selection (its size is n_split, known).
        split_at = torch.argsort((~split_rows).to(torch.int8), stable=True)[:n_split]
        merges = torch.cat(
            [torch.stack([b, h + p, qb, slot_start + p * chunks, chunks], dim=1)[split_at] for p in range(pack)]
        )
        num_slots = int(n_items - n_tiles.numel() + n_split) * pack
    else:
        merges, num_slots = torch.zeros(0, 5, dtype=torch.long, device=dev), 0
    return WorkList(items.to(torch.int32).contiguous(), merges.to(torch.int32).contiguous(), num_slots, max_chunk, pack)


def row_stats(layout: BlockLayout) -> RowStats:
    """``RowStats.of(layout)``, read back once per layout: the launch choice and the work list both ask."""
    return attached(layout, "row_stats", lambda: RowStats.of(layout))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def work_list(
    layout: BlockLayout,
    batch: int,
    heads: int,
    *,
    max_chunk: int | None = None,
    heavy_first: bool | None = None,
    pack: int = 1,
    runs: bool = True,
) -> WorkList:
    """The (cached) work list of ``layout`` for ``batch`` x ``heads`` query heads, ``pack`` heads per
    item; see `build_work_list`.

    ``heavy_first=None`` balances (heavy rows first, long rows split) only when the rows are unequal;
    ``runs`` plans the FULL runs that ``KernelConfig(full_runs=True)`` walks.
    """
    # Keyed by the arguments as given: resolving the defaults reads the layout's counts on the host,
    # a device sync that must not recur on every call.
    key = ("work_list", batch, heads, max_chunk, heavy_first, pack, runs)
    return attached(layout, key, lambda: _plan(layout, batch, heads, max_chunk, heavy_first, pack, runs))


def _plan(
    layout: BlockLayout, batch: int, heads: int, max_chunk: int | None, heavy_first: bool | None, pack: int, runs: bool
) -> WorkList:
    if layout.device_built and max_chunk is None and heavy_first is None:
        # Built once per layer and prompt: plan without reading the counts back (no split).
        max_chunk, heavy_first = 0, True
    # One host sync reads what the defaults need, and only when they are needed.
    stats = row_stats(layout) if heavy_first is None or (max_chunk is None and heavy_first) else None
    balance = stats.unequal if stats is not None and heavy_first is None else bool(heavy_first)
    chunk = max_chunk
    if chunk is None and not balance:
        chunk = 0
    elif chunk is None:
        assert stats is not None
        repeats = (batch // layout.batch_size) * (heads // pack // layout.num_heads)
        chunk = stats.max_chunk(repeats, _num_sms(layout.device))
    return build_work_list(layout, batch, heads, max_chunk=chunk, heavy_first=balance, pack=pack, runs=runs)
