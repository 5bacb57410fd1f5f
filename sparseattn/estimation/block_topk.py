"""`BlockTopK`: MInference's block-sparse head, and `BlockTopKTiles`, the concrete pattern it estimates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.estimation.budgets import (
    Budget,
    budget_heads,
    budget_max,
    budget_tensor,
    check_budget,
    check_int,
    check_qk,
)
from sparseattn.estimation.tile_estimate import TileEstimate
from sparseattn.estimation.topk import select_top
from sparseattn.layout import BlockLayout
from sparseattn.lowering.tile_grid import causal_bitmaps_on, layout_from_lists, layout_from_tile_grid, tile_bounds
from sparseattn.memo import shared_cache


def block_means(x: Tensor, block: int) -> Tensor:
    """``[H, S, D]`` -> ``[H, ceil(S / block), D]`` fp32 means over each block's in-bounds rows."""
    heads, length, dim = x.shape
    whole = length // block
    # Summed in fp32 straight from the input dtype: no fp32 or padded copy of a 128K-row x.
    sums = x[:, : whole * block].reshape(heads, whole, block, dim).sum(2, dtype=torch.float32)
    if length % block:
        sums = torch.cat([sums, x[:, whole * block :].sum(1, keepdim=True, dtype=torch.float32)], 1)
    rows = torch.clamp(length - torch.arange(sums.shape[1], device=x.device) * block, max=block)
    return sums / rows.view(1, -1, 1)


@shared_cache(maxsize=8)  # [QB, KB] grids: 4 MiB each at 128K; a forward's layers share one length
def reachable_blocks(q_len: int, kv_len: int, block: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(reachable [QB, KB]: some pair is causal, forced [QB, KB]: key block 0 or one holding the block's own positions).

    Memoised per shape and device like `tile_bounds`; shared tensors, never modified in place.
    """
    first, last, k_lo, k_hi = tile_bounds(q_len, kv_len, block, device)
    reach = k_lo.view(1, -1) <= last.view(-1, 1)
    own = reach & (k_hi.view(1, -1) >= first.view(-1, 1))
    sink = (torch.arange(k_lo.numel(), device=device) == 0).view(1, -1)
    return reach, own | sink


@dataclass(frozen=True)
class BlockTopK:
    """MInference's block-sparse head, dynamic: each query block keeps its ``topk`` best key blocks.

    Queries and keys are mean-pooled per ``block_size`` rows (in-bounds rows only); query block ``g``
    scores key block ``b`` by the dot product of the pooled vectors (fp32), among the key blocks it
    reaches causally. The sink block (key block 0) and the blocks holding the query block's own
    positions are always kept and count toward ``topk``; ties go to the lower key block. The mask of
    the estimate is ``k <= q_pos`` and ``(q // B, k // B)`` selected (see `BlockTopKTiles`).

    >>> BlockTopK(topk=16)
    BlockTopK(topk=16, block_size=64)
    """

    topk: Budget
    block_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "topk", check_budget("topk", self.topk))
        check_int("block_size", self.block_size, 32)
        if self.block_size % 32:
            raise ValueError(f"block_size: expected a multiple of 32, got {self.block_size}")

    @property
    def num_heads(self) -> int | None:
        return budget_heads(self.topk)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``[Hq, QB, KB]`` pooled scores, ``-inf`` where a key block is out of causal reach, ``+inf`` where forced."""
        reach, forced = reachable_blocks(q.shape[2], k.shape[2], self.block_size, q.device)
        return self.pooled_scores(q, k).masked_fill(~reach, -math.inf).masked_fill(forced, math.inf)

    def pooled_scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``[Hq, QB, KB]`` fp32 dot products of the pooled query and key blocks, before the causal rules."""
        check_qk(q, k)
        heads, kv_heads = q.shape[1], k.shape[1]
        q_pool = block_means(q[0], self.block_size)  # [Hq, QB, D]
        k_pool = block_means(k[0], self.block_size).repeat_interleave(heads // kv_heads, 0)  # [Hq, KB, D]
        return torch.matmul(q_pool, k_pool.transpose(-1, -2))

    def estimate(self, q: Tensor, k: Tensor) -> BlockTopKTiles:
        check_qk(q, k)
        q_len, kv_len = q.shape[2], k.shape[2]
        heads, kb_dim = q.shape[1], -(-kv_len // self.block_size)
        k_max = min(budget_max(self.topk), kb_dim)
        counts = budget_tensor("topk", self.topk, heads, q.device).clamp(max=kb_dim).view(-1, 1)
        # Same rules, two implementations: on CUDA, Triton kernels pool, score the causal half only
        # (fp32-accurate tensor-core products) and select in one read of the grid; the torch path is
        # their oracle and the CPU path.
        if q.is_cuda:
            from sparseattn.kernels.estimation.triton_pooled_scores import triton_block_means, triton_pooled_scores
            from sparseattn.kernels.estimation.triton_topk import triton_block_topk

            q_pool, k_pool = triton_block_means(q[0], self.block_size), triton_block_means(k[0], self.block_size)
            raw = triton_pooled_scores(q_pool, k_pool, q_len=q_len, kv_len=kv_len, block=self.block_size)
            kind_ids = causal_bitmaps_on(self.block_size, q_len, kv_len, q.device)[1]
            keep, lists = triton_block_topk(
                raw, counts, q_len, kv_len, self.block_size, row_bound=k_max + 3, kind_ids=kind_ids
            )
            layout = layout_from_lists(lists, None, q_len=q_len, kv_len=kv_len, block=self.block_size)
            return BlockTopKTiles(keep, self.block_size, q_len, kv_len, max_per_row=k_max + 3, layout=layout)
        else:
            raw = self.pooled_scores(q, k)
            reach, forced = reachable_blocks(q_len, kv_len, self.block_size, q.device)
            masked = raw.masked_fill(~reach, -math.inf).masked_fill(forced, math.inf)
            keep = (select_top(masked, counts, k_max) & reach) | forced
        # Forced blocks (the sink and at most two holding the block's own positions) may exceed the budget.
        return BlockTopKTiles(keep, self.block_size, q_len, kv_len, max_per_row=k_max + 3)


@dataclass(frozen=True, eq=False)
class BlockTopKTiles(TileEstimate):
    """Selected ``block_size`` tiles per head, causal: keep ``(q, k)`` iff ``k <= q_pos`` and ``tiles[h, q // B, k // B]``.

    ``tiles`` is bool ``[H, QB, KB]`` for the ``q_len`` x ``kv_len`` problem it was estimated on.
    ``max_per_row``, when given, is a bound on the tiles any query block keeps (`BlockTopK.estimate` sets
    it from its budget); lowering then gives each row that many slots, and a row holding more fails
    the next synchronising CUDA call (no sync is spent on checking it). ``layout``, when given, is this
    estimate's lowering, built in the same pass as ``tiles`` (`BlockTopK.estimate` on CUDA); lowering
    on its device then returns it.

    >>> tiles = torch.tensor([[[True, False], [True, True]]])
    >>> print(BlockTopKTiles(tiles, block_size=2, q_len=4, kv_len=4).render(4))
    #---
    ##--
    ###-
    ####
    """

    max_per_row: int | None = None
    layout: BlockLayout | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_per_row is not None:
            check_int("max_per_row", self.max_per_row, 1)

    def __repr__(self) -> str:
        return (
            f"BlockTopKTiles(heads={self.num_heads}, block_size={self.block_size}, "
            f"q_len={self.q_len}, kv_len={self.kv_len})"
        )

    def _lower_tiles(self, tiles: Tensor) -> BlockLayout:
        if self.layout is not None and self.layout.device == tiles.device:
            return self.layout
        return layout_from_tile_grid(
            tiles, q_len=self.q_len, kv_len=self.kv_len, block=self.block_size, max_tiles_per_row=self.max_per_row
        )
