"""`Documents`: packed sequences, each query attending only within its own document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.patterns.base import EMPTY, FULL, PARTIAL, MaskContext, Pattern, Tiles
from sparseattn.patterns.primitives import no_breaks

# Row breaks are worth their cost only while they are a fraction of a row's tiles (as for index sets).
_FEW_BREAKS = 64


@dataclass(frozen=True)
class Documents(Pattern):
    """Packed documents: a query keeps only keys of its own document, ``doc(q_pos) == doc(k)``.

    ``starts`` are the positions where the second, third, ... documents begin; ``doc(x)`` counts the
    starts at or before ``x``. Combine with `Causal` for packed causal prefill, or with any other
    pattern to sparsify inside documents. Stored sorted and deduplicated, so ``repr`` round-trips.

    >>> from sparseattn.patterns import Causal
    >>> print((Causal() & Documents((3,))).render(6))
    #-----
    ##----
    ###---
    ---#--
    ---##-
    ---###
    """

    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        values = self.starts
        if isinstance(values, Tensor):
            values = values.tolist()
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise ValueError(f"starts: expected a sequence of document start positions, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"starts: expected ints >= 1 (the first document starts at 0), got {v!r}")
        object.__setattr__(self, "starts", tuple(sorted(set(values))))

    def _starts(self, device: torch.device) -> Tensor:
        return torch.tensor(self.starts, dtype=torch.long, device=device)

    def _doc(self, x: Tensor) -> Tensor:
        return torch.searchsorted(self._starts(x.device), x.contiguous(), right=True)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        q_doc = self._doc(q_idx + ctx.offset)
        return q_doc == self._doc(kv_idx)

    def classify(self, tiles: Tiles) -> Tensor:
        # Documents are intervals, so the tile meets every document between its first and last row's
        # (and column's): FULL when one document covers both ranges, EMPTY when the ranges are disjoint.
        q_lo, q_hi = self._doc(tiles.q_start), self._doc(tiles.q_last)
        k_lo, k_hi = self._doc(tiles.k_start), self._doc(tiles.k_last)
        full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
        empty = (q_hi < k_lo) | (k_hi < q_lo)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)

    def _key_range(self, ctx: MaskContext) -> tuple[Tensor, Tensor]:
        """First and one past the last key of the documents each query block meets."""
        first, last = ctx.q_block_span
        bounds = torch.cat([torch.zeros(1, dtype=torch.long, device=ctx.device), self._starts(ctx.device)])
        lo = bounds[self._doc(first)]
        ends = torch.cat([self._starts(ctx.device), torch.tensor([ctx.kv_len], device=ctx.device)])
        hi = ends[self._doc(last)].clamp(max=ctx.kv_len)
        return lo, hi

    def support(self, ctx: MaskContext) -> Tiles:
        lo, hi = self._key_range(ctx)
        return Tiles.from_ranges(ctx, lo // ctx.block_n, -(-hi // ctx.block_n))

    def support_size(self, ctx: MaskContext) -> int:
        lo, hi = self._key_range(ctx)
        return int((-(-hi // ctx.block_n) - lo // ctx.block_n).clamp(min=0).sum())

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        # Along a row only the key side moves, and the class changes only where a tile's keys cross the
        # start or end of a document the row's queries are in: a row needs the starts of its own
        # documents and the one after them, not every start of the prompt.
        if not self.starts:
            return no_breaks(ctx)
        first, last = ctx.q_block_span
        q_lo, q_hi = self._doc(first), self._doc(last)
        width = int((q_hi - q_lo).max()) + 2  # the row's documents' starts and the next one's
        if 2 * width > max(_FEW_BREAKS, ctx.num_kv_blocks // 4):
            return None
        bounds = torch.cat(
            [
                torch.zeros(1, dtype=torch.long, device=ctx.device),
                self._starts(ctx.device),
                torch.tensor([ctx.kv_len], device=ctx.device),
            ]
        )
        index = (q_lo.view(-1, 1) + torch.arange(width, device=ctx.device)).clamp(max=bounds.numel() - 1)
        cuts = bounds[index].unsqueeze(0)  # [1, QB, width]
        floor = torch.div(cuts, ctx.block_n, rounding_mode="floor")
        return torch.cat([floor, -torch.div(-cuts, ctx.block_n, rounding_mode="floor")], dim=-1)

    def tile_key(self, tiles: Tiles) -> Tensor:
        # With at most one start inside the tile's rows and one inside its columns, the bitmap is fixed
        # by where they fall (the row and column at which the document changes) and by the difference
        # of the documents at the corner. A tile holding more starts (documents shorter than a tile)
        # is keyed by its own position.
        ctx = tiles.ctx
        q_doc, k_doc = self._doc(tiles.q_start), self._doc(tiles.k_start)
        q_cuts, k_cuts = self._doc(tiles.q_last) - q_doc, self._doc(tiles.k_last) - k_doc
        bounds = torch.cat([self._starts(ctx.device), torch.tensor([1 << 62], device=ctx.device)])
        q_change = torch.where(q_cuts > 0, bounds[q_doc] - tiles.q_start, ctx.block_m)
        k_change = torch.where(k_cuts > 0, bounds[k_doc] - tiles.k_start, ctx.block_n)
        simple = (q_cuts <= 1) & (k_cuts <= 1)
        key = torch.stack(
            [
                simple.long(),
                torch.where(simple, q_change, tiles.q_start),
                torch.where(simple, k_change, tiles.k_start),
                torch.where(simple, q_doc - k_doc, 0),
            ],
            dim=1,
        )
        # FULL and EMPTY tiles share one key each (negative: a PARTIAL key starts with 0 or 1).
        cls = self.classify(tiles).long().unsqueeze(1)
        return torch.where(cls == PARTIAL, key, cls - 3)
