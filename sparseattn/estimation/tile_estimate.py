"""`TileEstimate`: what estimates decided per square tile share (validation, truth by tile lookup, lowering)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.lowering.tile_grid import layout_from_tile_grid
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.tiles import MaskContext


@dataclass(frozen=True, eq=False)
class TileEstimate(Pattern):
    """Base of estimates whose mask is ``k <= q_pos`` and a per-tile decision.

    ``tiles`` is bool ``[H, QB, KB]`` of ``block_size`` x ``block_size`` tiles for the ``q_len`` x ``kv_len``
    problem it was estimated on; by itself it keeps exactly the causal pairs of kept tiles. Subclasses
    widen the decision per key in `_keeps` and extend the lowering in `_lower_tiles`; lowering on any
    other tile shape or lengths is an error.
    """

    tiles: Tensor
    block_size: int
    q_len: int
    kv_len: int

    def __post_init__(self) -> None:
        qb, kb = -(-self.q_len // self.block_size), -(-self.kv_len // self.block_size)
        if not isinstance(self.tiles, Tensor) or self.tiles.dim() != 3 or self.tiles.shape[1:] != (qb, kb):
            raise ValueError(
                f"tiles: expected a bool tensor [heads, {qb}, {kb}], got {getattr(self.tiles, 'shape', self.tiles)!r}"
            )

    @property
    def num_heads(self) -> int:
        return int(self.tiles.shape[0])

    def _check_lengths(self, q_len: int, kv_len: int) -> None:
        if (q_len, kv_len) != (self.q_len, self.kv_len):
            raise ValueError(f"q_len, kv_len: estimated for ({self.q_len}, {self.kv_len}), got ({q_len}, {kv_len})")

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        self._check_lengths(ctx.q_len, ctx.kv_len)
        dev = self.tiles.device
        h, q_idx, kv_idx = h.to(dev), q_idx.to(dev), kv_idx.to(dev)
        kv = kv_idx.clamp(0, ctx.kv_len - 1)
        tile = self.tiles[h, q_idx.clamp(0, ctx.q_len - 1) // self.block_size, kv // self.block_size]
        return (kv_idx <= q_idx + ctx.offset) & self._keeps(h, kv, tile, ctx)

    def _keeps(self, h: Tensor, kv: Tensor, tile: Tensor, ctx: MaskContext) -> Tensor:
        """Whether head ``h`` keeps key ``kv`` given its tile's decision ``tile`` (causality applied apart)."""
        return tile

    @property
    def native_block_size(self) -> tuple[int, int]:
        return (self.block_size, self.block_size)

    def own_layout(
        self, q_len: int, kv_len: int, block_size: tuple[int, int], device: torch.device | None
    ) -> BlockLayout:
        """Kept tiles as FULL (below the diagonal) or causal PARTIAL tiles, on the GPU, without host sync."""
        self._check_lengths(q_len, kv_len)
        return self._lower_tiles(self.tiles if device is None else self.tiles.to(device))

    def _lower_tiles(self, tiles: Tensor) -> BlockLayout:
        """The layout of ``tiles`` (this estimate's, on the target device); subclasses add columns or bounds."""
        return layout_from_tile_grid(tiles, q_len=self.q_len, kv_len=self.kv_len, block=self.block_size)
