"""`HeadTiles`: kept tiles and key columns per head, the common form of MInference's dynamic estimates."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sparseattn.estimation.tile_estimate import TileEstimate
from sparseattn.layout import BlockLayout
from sparseattn.lowering.tile_grid import index_table, layout_from_tile_grid
from sparseattn.patterns.tiles import MaskContext


@dataclass(frozen=True, eq=False)
class HeadTiles(TileEstimate):
    """Keep ``(q, k)`` iff ``k <= q_pos`` and (``tiles[h, q // B, k // B]`` or ``k`` in ``columns[h]``).

    ``tiles`` is bool ``[H, QB, KB]`` for the ``q_len`` x ``kv_len`` problem it was estimated on, with
    ``B = block_size``; ``columns`` is ``[H, C]``, each head's key columns ascending, padded with
    `PAD <sparseattn.estimation.topk.PAD>` (any value ``>= kv_len`` is ignored). A block-rounded
    vertical-slash estimate is this with the slash tiles and the verticals, a block top-k estimate with
    its tiles and no columns; a layer mixing both kinds of head (`MixedHeads`) lowers in one pass on the
    GPU through it.

    >>> import torch
    >>> tiles = torch.tensor([[[True, False], [False, True]]])
    >>> print(HeadTiles(tiles, block_size=2, q_len=4, kv_len=4, columns=torch.tensor([[0]])).render(4))
    #---
    ##--
    #-#-
    #-##
    """

    columns: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def _keeps(self, h: Tensor, kv: Tensor, tile: Tensor, ctx: MaskContext) -> Tensor:
        return tile | index_table(self.columns, ctx.kv_len)[h, kv]

    def _lower_tiles(self, tiles: Tensor) -> BlockLayout:
        """Columns no kept tile covers are gathered; no host sync."""
        if not self.columns.shape[1]:
            return super()._lower_tiles(tiles)
        return layout_from_tile_grid(
            tiles, q_len=self.q_len, kv_len=self.kv_len, block=self.block_size, columns=self.columns.to(tiles.device)
        )
