"""PARTIAL tiles whose rows each keep one run of columns, masked by two bounds per row instead of a bitmap.

The bitmap path costs a PARTIAL tile about 1.5 times a FULL one (experiments/results/partial_cost.md:
Triangle() at 32K runs in 1.143 ms as lowered and 1.005 ms with its tiles all FULL): the packed words
are loaded and expanded to one bit per score, which the compiler lays out apart from the scores. Most
partial tiles are simpler: a causal diagonal, a window edge, a sink or a document boundary keep, in
each row, one contiguous run of columns. For those the kernel reads the run's ``[lo, hi)`` per row and
compares it with the column index, which it builds in the scores' own layout.

This plan, made once per layout (``triton_fwd`` caches it), gives the kernel

- ``spans`` [T, block_m, 2] int32: each bitmap's per-row run (``lo == hi == 0`` for an empty row),
  meaningful only for bitmaps whose every row is a single run;
- a copy of the layout's partial lists, each row's interval tiles first (order within a row does not
  change attention), and ``n_interval`` [B, H, QB] int32, how many lead each row.

Rows that share storage (`BlockLayout.select_heads`) share one slice of the flat lists; the reordering
keeps every slice in place, so they still do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout, unpack_bits


@dataclass(frozen=True)
class SpanPlan:
    spans: Tensor  # [T, block_m, 2] int32
    kv_indices: Tensor  # [nnz_partial] int32, interval tiles first within each row
    kv_mask_ids: Tensor  # [nnz_partial] int32, permuted alike
    n_interval: Tensor  # [B, H, QB] int32


def bitmap_spans(tile_masks: Tensor, block_n: int) -> tuple[Tensor, Tensor]:
    """``(spans [T, M, 2] int32, single_run [T] bool)`` of packed bitmaps ``[T, M, block_n // 32]``."""
    bits = unpack_bits(tile_masks, block_n)  # [T, M, N]
    cols = torch.arange(block_n, device=bits.device)
    kept = bits.sum(-1)
    lo = torch.where(bits, cols, block_n).amin(-1)
    hi = torch.where(bits, cols + 1, 0).amax(-1)
    empty = kept == 0
    single_run = empty | (kept == hi - lo)
    spans = torch.stack([torch.where(empty, 0, lo), torch.where(empty, 0, hi)], dim=-1)
    return spans.to(torch.int32), single_run.all(-1)


def span_plan(layout: BlockLayout) -> SpanPlan:
    """The kernel's view of ``layout``'s partial tiles (see the module docstring)."""
    spans, single_run = bitmap_spans(layout.tile_masks, layout.block_n)
    n = layout.kv_indices.numel()
    if n == 0:
        return SpanPlan(spans, layout.kv_indices, layout.kv_mask_ids, torch.zeros_like(layout.kv_num_blocks))
    interval = single_run[layout.kv_mask_ids.long()]  # [nnz]
    # Each row's slice gets its own id, and so does each gap after a slice (a device-built layout's
    # unused capacity), so nothing moves across a slice boundary; no device value is read back.
    first = layout.kv_start.long().reshape(-1).clamp(max=n)
    last = (layout.kv_start.long() + layout.kv_num_blocks.long()).reshape(-1).clamp(max=n)
    edge = torch.zeros(n + 1, dtype=torch.long, device=interval.device)
    edge[first] = 1
    edge[last] = 1
    slice_id = torch.cumsum(edge, 0)[:n]
    order = torch.argsort(slice_id * 2 + (~interval).long(), stable=True)
    before = torch.cat([torch.zeros(1, dtype=torch.long, device=interval.device), torch.cumsum(interval.long(), 0)])
    n_interval = (before[last] - before[first]).to(torch.int32).view(layout.kv_num_blocks.shape)
    return SpanPlan(spans, layout.kv_indices[order], layout.kv_mask_ids[order], n_interval)
