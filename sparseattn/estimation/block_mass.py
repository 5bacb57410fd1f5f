"""`BlockMass`: block-sparse attention with an adaptive budget, the smallest set of key blocks holding a
given share of the estimated attention mass (FlexPrefill's and XAttention's cumulative-threshold rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.estimation.block_topk import BlockTopK, BlockTopKTiles, reachable_blocks
from sparseattn.estimation.budgets import check_int, check_qk

Threshold = float | tuple[float, ...]


def _check_threshold(value: object) -> Threshold:
    """A share in (0, 1] for every head, or one per head (lists, OmegaConf lists accepted and frozen)."""

    def one(name: str, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"{name}: expected a share of the attention mass in (0, 1], got {v!r}")
        return float(v)

    if isinstance(value, (int, float)):
        return one("threshold", value)
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        values = list(value)
        if not values:
            raise ValueError("threshold: expected a float or one float per head, got an empty sequence")
        return tuple(one(f"threshold[{h}]", v) for h, v in enumerate(values))
    raise ValueError(f"threshold: expected a float or one float per head, got {value!r}")


@dataclass(frozen=True)
class BlockMass:
    """Each query block keeps the fewest key blocks whose estimated attention mass reaches ``threshold``.

    Queries and keys are mean-pooled per ``block_size`` rows as in `BlockTopK`; query block ``g`` gives
    key block ``b`` the estimated share ``p[g, b] = softmax_b(q_pool[g] . k_pool[b] / sqrt(D))`` over
    the key blocks it reaches causally. Blocks are taken in order: forced ones first (the sink block and
    the blocks holding the query block's own positions), then by decreasing share, ties to the lower
    block; a block is kept while the mass taken before it is below ``threshold``. So a peaked row keeps a
    handful of blocks and a flat one many, where `BlockTopK` keeps the same count everywhere. The
    estimate is a `BlockTopKTiles` (mask ``k <= q_pos`` and the tile kept), lowered and computed by the
    same kernel; per-head thresholds are a tuple.

    >>> BlockMass(0.9)
    BlockMass(threshold=0.9, block_size=64)
    """

    threshold: Threshold
    block_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", _check_threshold(self.threshold))
        check_int("block_size", self.block_size, 32)
        if self.block_size % 32:
            raise ValueError(f"block_size: expected a multiple of 32, got {self.block_size}")

    @property
    def num_heads(self) -> int | None:
        return len(self.threshold) if isinstance(self.threshold, tuple) else None

    def shares(self, q: Tensor, k: Tensor) -> Tensor:
        """``[Hq, QB, KB]`` fp32 estimated attention share of each key block, 0 out of causal reach."""
        check_qk(q, k)
        reach, _ = reachable_blocks(q.shape[2], k.shape[2], self.block_size, q.device)
        return self._shares(q, k, reach)

    def _shares(self, q: Tensor, k: Tensor, reach: Tensor) -> Tensor:
        logits = BlockTopK(1, self.block_size).pooled_scores(q, k) / math.sqrt(q.shape[-1])
        return torch.softmax(logits.masked_fill(~reach, -math.inf), dim=-1)

    def estimate(self, q: Tensor, k: Tensor) -> BlockTopKTiles:
        """The kept tiles for ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``; no host synchronisation."""
        check_qk(q, k)
        heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
        if isinstance(self.threshold, tuple) and len(self.threshold) != heads:
            raise ValueError(f"threshold: {len(self.threshold)} per-head thresholds, but q has {heads} heads")
        reach, forced = reachable_blocks(q_len, kv_len, self.block_size, q.device)
        p = self._shares(q, k, reach)
        threshold = torch.as_tensor(self.threshold, dtype=torch.float32, device=q.device).expand(heads)
        # Forced blocks sort first (+inf); a stable sort keeps equal shares in block order.
        order = torch.sort(torch.where(forced, math.inf, p), dim=-1, descending=True, stable=True).indices
        sorted_p = p.gather(-1, order)
        taken = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass before each block
        keep_sorted = (taken < threshold.view(-1, 1, 1)) | forced.expand_as(p).gather(-1, order)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        return BlockTopKTiles(keep & reach, self.block_size, q_len, kv_len)
