"""`HeadTiles`: kept tiles and key columns per head, the common form of MInference's dynamic estimates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.patterns.base import MaskContext, Pattern
from sparseattn.patterns.dynamic.tile_grid import index_table, layout_from_tile_grid, uncovered_columns


@dataclass(frozen=True, eq=False)
class HeadTiles(Pattern):
    """Keep ``(q, k)`` iff ``k <= q_pos`` and (``tiles[h, q // B, k // B]`` or ``k`` in ``columns[h]``).

    ``tiles`` is bool ``[H, QB, KB]`` for the ``q_len`` x ``kv_len`` problem it was estimated on, with
    ``B = block_size``; ``columns`` is ``[H, C]``, each head's key columns ascending, padded with
    `PAD <sparseattn.patterns.dynamic.topk.PAD>` (any value ``>= kv_len`` is ignored). A block-rounded
    vertical-slash estimate is this with the slash tiles and the verticals, a block top-k estimate with
    its tiles and no columns; a layer mixing both kinds of head (`MixedHeads`) lowers in one pass on the
    GPU through it.

    >>> tiles = torch.tensor([[[True, False], [False, True]]])
    >>> print(HeadTiles(tiles, torch.tensor([[0]]), block_size=2, q_len=4, kv_len=4).render(4))
    #---
    ##--
    #-#-
    #-##
    """

    tiles: Tensor
    columns: Tensor
    block_size: int
    q_len: int
    kv_len: int

    def __post_init__(self) -> None:
        qb, kb = -(-self.q_len // self.block_size), -(-self.kv_len // self.block_size)
        if not isinstance(self.tiles, Tensor) or self.tiles.dim() != 3 or self.tiles.shape[1:] != (qb, kb):
            raise ValueError(
                f"tiles: expected a bool tensor [heads, {qb}, {kb}], got {getattr(self.tiles, 'shape', self.tiles)!r}"
            )
        c = self.columns
        if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[0] != self.tiles.shape[0] or c.is_floating_point():
            raise ValueError(
                f"columns: expected an integer tensor [{self.tiles.shape[0]}, count], got {getattr(c, 'shape', c)!r}"
            )
        object.__setattr__(self, "columns", c.long())

    def __repr__(self) -> str:
        return (
            f"HeadTiles(heads={self.num_heads}, columns={self.columns.shape[1]}, block_size={self.block_size}, "
            f"q_len={self.q_len}, kv_len={self.kv_len})"
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
        return (kv_idx <= q_idx + ctx.offset) & (tile | index_table(self.columns, ctx.kv_len)[h, kv])

    def lower(
        self,
        q_len: int,
        kv_len: int | None = None,
        block_size: tuple[int, int] | None = None,
        num_heads: int | None = None,
        device: torch.device | str | None = None,
    ) -> BlockLayout:
        """Kept tiles as FULL or causal PARTIAL tiles, columns no kept tile covers gathered; GPU, no host sync."""
        kv_len = q_len if kv_len is None else kv_len
        self._check_lengths(q_len, kv_len)
        self._resolve_heads(num_heads)
        native = (self.block_size, self.block_size)
        if block_size is not None and tuple(block_size) != native:
            raise ValueError(
                f"block_size: these tiles are {native}, got {tuple(block_size)}; lower with block_size={native} or None"
            )
        tiles, columns = self.tiles, self.columns
        if device is not None:
            tiles, columns = tiles.to(device), columns.to(device)
        gathered = uncovered_columns(columns, tiles, q_len, kv_len, self.block_size) if columns.shape[1] else None
        return layout_from_tile_grid(tiles, q_len=q_len, kv_len=kv_len, block=self.block_size, columns=gathered)
