"""`Documents`: packed sequences, each query attending only within its own document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.patterns.base import MaskMod, Pattern
from sparseattn.patterns.primitives import key_breaks, no_breaks
from sparseattn.patterns.tiles import EMPTY, FULL, PARTIAL, MaskContext, Tiles

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

    def _bounds(self, ctx: MaskContext) -> Tensor:
        """``[0, *starts, kv_len]``: document ``d`` holds the keys in ``[bounds[d], bounds[d + 1])``."""
        return torch.tensor((0, *self.starts, ctx.kv_len), dtype=torch.long, device=ctx.device)

    @staticmethod
    def _doc(bounds: Tensor, x: Tensor) -> Tensor:
        """The document of each position ``x`` (the starts at or before it)."""
        return torch.searchsorted(bounds[1:-1], x.contiguous(), right=True)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        bounds = self._bounds(ctx)
        return self._doc(bounds, q_idx + ctx.offset) == self._doc(bounds, kv_idx)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        """``doc(x)`` as the number of starts at or before ``x``: one comparison per document start."""
        offset = ctx.offset
        starts = torch.tensor(self.starts, dtype=torch.long)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            s = starts.to(q_idx.device)
            q_doc = ((q_idx + offset).unsqueeze(-1) >= s).sum(-1)
            return q_doc == (kv_idx.unsqueeze(-1) >= s).sum(-1)

        return mask_mod

    def _doc_spans(self, tiles: Tiles) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(bounds, then the documents of each tile's first and last row, first and last column)."""
        bounds = self._bounds(tiles.ctx)
        spans = (tiles.q_start, tiles.q_last, tiles.k_start, tiles.k_last)
        q_lo, q_hi, k_lo, k_hi = (self._doc(bounds, x) for x in spans)
        return bounds, q_lo, q_hi, k_lo, k_hi

    @staticmethod
    def _class(q_lo: Tensor, q_hi: Tensor, k_lo: Tensor, k_hi: Tensor) -> Tensor:
        # Documents are intervals, so the tile meets every document between its first and last row's
        # (and column's): FULL when one document covers both ranges, EMPTY when the ranges are disjoint.
        full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
        empty = (q_hi < k_lo) | (k_hi < q_lo)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)

    def classify(self, tiles: Tiles) -> Tensor:
        return self._class(*self._doc_spans(tiles)[1:])

    def _key_range(self, ctx: MaskContext) -> tuple[Tensor, Tensor]:
        """First and one past the last key of the documents each query block meets."""
        first, last = ctx.q_block_span
        bounds = self._bounds(ctx)
        return bounds[self._doc(bounds, first)], bounds[self._doc(bounds, last) + 1].clamp(max=ctx.kv_len)

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
        bounds = self._bounds(ctx)
        q_lo, q_hi = self._doc(bounds, first), self._doc(bounds, last)
        width = int((q_hi - q_lo).max()) + 2  # the row's documents' starts and the next one's
        if 2 * width > max(_FEW_BREAKS, ctx.num_kv_blocks // 4):
            return None
        index = (q_lo.view(-1, 1) + torch.arange(width, device=ctx.device)).clamp(max=bounds.numel() - 1)
        return key_breaks(ctx, bounds[index].unsqueeze(0))  # cuts [1, QB, width]

    def tile_key(self, tiles: Tiles) -> Tensor:
        # With at most one start inside the tile's rows and one inside its columns, the bitmap is fixed
        # by where they fall (the row and column at which the document changes) and by the difference
        # of the documents at the corner. A tile holding more starts (documents shorter than a tile)
        # is keyed by its own position.
        ctx = tiles.ctx
        bounds, q_doc, q_last_doc, k_doc, k_last_doc = self._doc_spans(tiles)
        q_cuts, k_cuts = q_last_doc - q_doc, k_last_doc - k_doc
        q_change = torch.where(q_cuts > 0, bounds[q_doc + 1] - tiles.q_start, ctx.block_m)
        k_change = torch.where(k_cuts > 0, bounds[k_doc + 1] - tiles.k_start, ctx.block_n)
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
        cls = self._class(q_doc, q_last_doc, k_doc, k_last_doc).long().unsqueeze(1)
        return torch.where(cls == PARTIAL, key, cls - 3)
