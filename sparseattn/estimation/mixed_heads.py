"""`MixedHeads`: a layer whose heads use different MInference head types, estimated together."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.estimation.block_topk import BlockTopK, BlockTopKTiles
from sparseattn.estimation.budgets import check_qk, per_head_values, scalar_budget
from sparseattn.estimation.head_tiles import HeadTiles
from sparseattn.estimation.topk import PAD
from sparseattn.estimation.vertical_slash import VerticalSlash
from sparseattn.estimation.vs_indices import VerticalSlashIndices
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.per_head import PerHead

HeadPattern = VerticalSlash | BlockTopK | Pattern


@dataclass(frozen=True)
class MixedHeads:
    """Head ``h`` follows ``heads[h]``: a `VerticalSlash`, a `BlockTopK` or a static `Pattern`.

    ``estimate`` runs each dynamic kind once over all heads (per-head budgets taken from the heads of
    that kind, no loop over heads). When every head is dynamic, on one tile size, with vertical-slash
    heads in the block form, it returns a `HeadTiles` (each head's kept tiles and columns), which lowers
    in one pass on the GPU without host synchronisation; otherwise (a static head, the token form) a
    `PerHead` of the concrete patterns, which lowers through the generic analytic lowering (exact, host
    side). Both stand for the same mask.

    >>> from sparseattn.patterns import AShape
    >>> MixedHeads((VerticalSlash(100, 800), AShape(1, 4))).num_heads
    2
    """

    heads: tuple[HeadPattern, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if not self.heads:
            raise ValueError("heads: expected one pattern per head, got none")
        for h, p in enumerate(self.heads):
            if not isinstance(p, (VerticalSlash, BlockTopK, Pattern)):
                raise ValueError(f"heads[{h}]: expected VerticalSlash, BlockTopK or a Pattern, got {type(p).__name__}")
            if getattr(p, "num_heads", None) is not None:
                raise ValueError(f"heads[{h}]: expected a pattern for one head (scalar budgets), got {p!r}")
        vs = [p for p in self.heads if isinstance(p, VerticalSlash)]
        if len({(p.last_q, p.sink_columns, p.local_diagonals, p.form, p.block_size, p.scale) for p in vs}) > 1:
            raise ValueError("heads: VerticalSlash heads of one layer must share every setting but the budgets")
        if len({p.block_size for p in self.heads if isinstance(p, BlockTopK)}) > 1:
            raise ValueError("heads: BlockTopK heads of one layer must share block_size")

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def estimate(self, q: Tensor, k: Tensor) -> HeadTiles | PerHead:
        check_qk(q, k)
        if q.shape[1] != self.num_heads:
            raise ValueError(f"q: MixedHeads is written for {self.num_heads} heads, got {q.shape[1]}")
        # Each dynamic kind is estimated once over all heads; heads of another kind get a budget of 1,
        # so the estimate covers every head, and keep their own pattern below.
        concrete: dict[type, Pattern] = {}
        slashes = [p for p in self.heads if isinstance(p, VerticalSlash)]
        if slashes:
            t = slashes[0]
            joint = VerticalSlash(
                tuple(scalar_budget(p.vertical) if isinstance(p, VerticalSlash) else 1 for p in self.heads),
                tuple(scalar_budget(p.slash) if isinstance(p, VerticalSlash) else 1 for p in self.heads),
                t.last_q,
                t.sink_columns,
                t.local_diagonals,
                t.form,
                t.block_size,
                t.scale,
            )
            concrete[VerticalSlash] = joint.estimate(q, k)
        blocks = [p for p in self.heads if isinstance(p, BlockTopK)]
        if blocks:
            joint_blocks = BlockTopK(
                tuple(scalar_budget(p.topk) if isinstance(p, BlockTopK) else 1 for p in self.heads),
                blocks[0].block_size,
            )
            concrete[BlockTopK] = joint_blocks.estimate(q, k)
        if self._tiled():
            return self._head_tiles(concrete, q.shape[2], k.shape[2], q.device)
        return PerHead(tuple(p if isinstance(p, Pattern) else concrete[type(p)] for p in self.heads))

    def _tiled(self) -> bool:
        """Every head dynamic, on one tile size, vertical-slash heads in the block form."""
        sizes = {p.block_size for p in self.heads if isinstance(p, (VerticalSlash, BlockTopK))}
        blocky = all(
            isinstance(p, BlockTopK) or (isinstance(p, VerticalSlash) and p.form == "block") for p in self.heads
        )
        return blocky and len(sizes) == 1

    def _head_tiles(self, concrete: dict[type, Pattern], q_len: int, kv_len: int, device: torch.device) -> HeadTiles:
        """Each head's rows taken from the joint estimate of its kind (the other kind's rows are dropped)."""
        block = next(p.block_size for p in self.heads if isinstance(p, (VerticalSlash, BlockTopK)))  # one size
        is_vs = tuple(isinstance(p, VerticalSlash) for p in self.heads)
        vs = concrete.get(VerticalSlash)
        mine = per_head_values(is_vs, torch.bool, torch.device(device))
        tiles = torch.zeros(self.num_heads, -(-q_len // block), -(-kv_len // block), dtype=torch.bool, device=device)
        columns = torch.full((self.num_heads, 0), PAD, dtype=torch.long, device=device)
        if isinstance(vs, VerticalSlashIndices):
            tiles = torch.where(mine.view(-1, 1, 1), vs.tile_grid(q_len, kv_len), tiles)
            columns = torch.where(mine.view(-1, 1), vs.vertical, PAD)
        blocks = concrete.get(BlockTopK)
        if isinstance(blocks, BlockTopKTiles):
            tiles = torch.where(mine.view(-1, 1, 1), tiles, blocks.tiles)
        return HeadTiles(tiles, block, q_len, kv_len, columns)
