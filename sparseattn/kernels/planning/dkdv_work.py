"""Work list of the backward's dK/dV kernel: which program sums which query blocks into which key block.

A *program* owns one (batch, kv head, key block) and walks, for each query head of the kv head's GQA
group, the query blocks of the kv-major view (`kv_major.py`) that hold the key block: FULL tiles, then
PARTIAL tiles and gathered columns. Programs are very unequal: a triangle's or a streaming pattern's sink
key block is read by every query block, so its program walks the whole prompt once per query head while
the others walk a handful of tiles, and the kernel lasts as long as that one program.

So, like the forward's work list (`work_list.py`, same thresholds), a program longer than ``max_chunk``
tiles is split: one item per query head of the group, and that head's FULL list cut into chunks of at
most ``max_chunk`` tiles; the first chunk of a head also takes its PARTIAL tiles and gathered columns.
Each split item writes its fp32 dK/dV share to a scratch slot, and a merge kernel sums a program's slots
in slot order: the result stays deterministic. Items run heaviest first.

Built with torch ops on the layout's device; splitting costs two host syncs (whether to split, and how
many items), once per layout and call shape (memoised on the layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.kernels.planning.kv_major import kv_major
from sparseattn.kernels.planning.work_list import MIN_CHUNK_TILES, UNEQUAL_ROWS, WAVES, _num_sms
from sparseattn.layout import BlockLayout
from sparseattn.memo import attached

# Columns of an item (int32): program (flat batch, kv head, key block), first and end query head of the
# group, first and end slot of the FULL list (`WHOLE_LIST`: all of it), scratch slot (-1: write dK/dV).
DKDV_FIELDS = 6
WHOLE_LIST = 2**31 - 1


@dataclass(frozen=True)
class DkdvWork:
    """``items`` [W, 6] int32 (see ``DKDV_FIELDS``), heaviest first; ``merges`` [R, 3] int32 rows (program,
    first scratch slot, number of slots) of the split programs; ``num_slots`` scratch slots;
    ``max_chunk`` the FULL tiles per split item (0: nothing split)."""

    items: Tensor
    merges: Tensor
    num_slots: int
    max_chunk: int


def build_dkdv_work(
    layout: BlockLayout, batch: int, heads: int, kv_heads: int, max_chunk: int | None = None
) -> DkdvWork:
    """`DkdvWork` for ``batch`` x ``heads`` query heads over ``kv_heads`` kv heads (not memoised).

    ``max_chunk=None`` splits programs only when they are unequal (the longest at least `UNEQUAL_ROWS`
    times the mean), in chunks that give each multiprocessor about `WAVES` chunks of work, never shorter
    than `MIN_CHUNK_TILES`; ``0`` never splits; a positive value splits every program longer than it.
    """
    if max_chunk is not None and max_chunk < 0:
        raise ValueError(f"max_chunk: expected None, 0 or a positive number of tiles, got {max_chunk}")
    view = kv_major(layout)
    group, kbs = heads // kv_heads, layout.num_kv_blocks
    per_head = view.tiles_per_key_block().expand(batch, heads, kbs).reshape(batch * kv_heads, group, kbs)
    full = view.full_q_num.long().expand(batch, heads, kbs).reshape(batch * kv_heads, group, kbs)
    per_head, full = per_head.transpose(1, 2).reshape(-1, group), full.transpose(1, 2).reshape(-1, group)
    cost = per_head.sum(1)  # [P] tiles of each program, P = B * Hkv * KB in flat program order
    dev = cost.device
    if max_chunk is None:
        longest, total = (int(x) for x in torch.stack([cost.max(), cost.sum()]).tolist())
        unequal = longest >= UNEQUAL_ROWS * total / cost.numel()
        chunk = max(MIN_CHUNK_TILES, -(-total // (_num_sms(dev) * WAVES)))
        max_chunk = chunk if unequal and longest > chunk else 0
    split = cost > max_chunk if max_chunk else torch.zeros_like(cost, dtype=torch.bool)

    whole = torch.nonzero(~split).squeeze(1)
    whole_items = torch.stack(
        [
            whole,
            torch.zeros_like(whole),
            torch.full_like(whole, group),
            torch.zeros_like(whole),
            torch.full_like(whole, WHOLE_LIST),
            torch.full_like(whole, -1),
        ],
        1,
    )
    whole_cost = cost[whole]

    progs = torch.nonzero(split).squeeze(1)  # [S]
    # Per split (program, head): its FULL list in chunks (at least one, which also takes the rest).
    f = full[progs]  # [S, group]
    chunks = (-(-f // max(max_chunk, 1))).clamp(min=1)  # [S, group]
    flat_chunks = chunks.reshape(-1)
    owner = torch.repeat_interleave(torch.arange(flat_chunks.numel(), device=dev), flat_chunks)  # [N]
    first_of = torch.cumsum(flat_chunks, 0) - flat_chunks
    index = torch.arange(owner.numel(), device=dev) - first_of[owner]  # chunk index within its head
    f_lo = index * max_chunk
    f_hi = torch.minimum(f_lo + max_chunk, f.reshape(-1)[owner])
    head_g = owner % group
    prog_of = progs[owner // group]
    rest = (per_head[progs] - f).reshape(-1)[owner]
    split_items = torch.stack([prog_of, head_g, head_g + 1, f_lo, f_hi, torch.arange(owner.numel(), device=dev)], 1)
    split_cost = (f_hi - f_lo) + torch.where(index == 0, rest, 0)
    slots_per_prog = chunks.sum(1)
    merges = torch.stack([progs, torch.cumsum(slots_per_prog, 0) - slots_per_prog, slots_per_prog], 1)

    items = torch.cat([whole_items, split_items])
    order = torch.argsort(torch.cat([whole_cost, split_cost]), descending=True, stable=True)
    return DkdvWork(
        items[order].to(torch.int32).contiguous(), merges.to(torch.int32).contiguous(), owner.numel(), max_chunk
    )


def dkdv_work(layout: BlockLayout, batch: int, heads: int, kv_heads: int, max_chunk: int | None = None) -> DkdvWork:
    """`build_dkdv_work`, memoised on the layout per call shape and ``max_chunk``."""
    return attached(
        layout,
        ("dkdv_work", batch, heads, kv_heads, max_chunk),
        lambda: build_dkdv_work(layout, batch, heads, kv_heads, max_chunk),
    )
