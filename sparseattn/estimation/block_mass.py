"""`BlockMass`: block-sparse attention with an adaptive budget, the smallest set of key blocks holding a
given share of the estimated attention mass (FlexPrefill's and XAttention's cumulative-threshold rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseattn.estimation.block_topk import BlockTopK, BlockTopKTiles, reachable_blocks
from sparseattn.estimation.budgets import Threshold, check_int, check_qk, check_threshold, per_head_tensor

ESTIMATORS = ("pooled", "sampled")
CHUNK_ELEMENTS = 1 << 27  # fp32 probabilities held at once by `sampled_block_shares` (512 MiB)


def sampled_rows(q_len: int, block: int, samples: int, device: torch.device) -> Tensor:
    """``[QB, samples]`` query indices sampled from each block: ``first + ceil((j + 1) L / samples) - 1``."""
    first = torch.arange(-(-q_len // block), device=device).view(-1, 1) * block
    rows_in = torch.clamp(q_len - first, max=block)
    j = torch.arange(samples, device=device).view(1, -1)
    return first + ((j + 1) * rows_in + samples - 1) // samples - 1


def sampled_block_shares(q: Tensor, k: Tensor, block: int, samples: int) -> Tensor:
    """``[Hq, QB, KB]`` fp32: mean over each query block's sampled rows of the softmax mass per key block.

    On CUDA one Triton launch (`triton_sampled_shares`) that never writes the probabilities; elsewhere
    torch, its oracle, in chunks of query blocks (at most `CHUNK_ELEMENTS` probabilities at a time; the
    chunks are fixed by the shapes, so nothing waits for the device). GQA reads kv head ``h // (Hq // Hkv)``.
    """
    rows = sampled_rows(q.shape[2], block, samples, q.device)  # [QB, s]
    if q.is_cuda:
        from sparseattn.kernels.estimation.triton_sampled_shares import triton_sampled_shares

        return triton_sampled_shares(q, k, rows, block)
    return torch_sampled_shares(q, k, rows, block)


def torch_sampled_shares(q: Tensor, k: Tensor, rows: Tensor, block: int) -> Tensor:
    """`sampled_block_shares` in torch operations, for the sampled query indices ``rows [QB, s]``: the CPU
    path and the oracle of `triton_sampled_shares`."""
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    samples = rows.shape[1]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group, scale = heads // kv_heads, 1.0 / math.sqrt(dim)
    qb_dim, kb_dim = -(-q_len // block), -(-kv_len // block)
    keys = k[0].float().transpose(-1, -2)  # [Hkv, D, kv_len]
    key_idx = torch.arange(kv_len, device=q.device)
    per_chunk = max(1, CHUNK_ELEMENTS // (heads * samples * kv_len))
    out = []
    for g0 in range(0, qb_dim, per_chunk):
        chunk = rows[g0 : g0 + per_chunk]  # [C, s]
        count = chunk.numel()
        picked = q[0, :, chunk.reshape(-1)].float().reshape(kv_heads, group * count, dim)
        logits = torch.matmul(picked, keys).view(heads, count, kv_len) * scale
        future = key_idx.view(1, -1) > (chunk.reshape(-1, 1) + kv_len - q_len)  # [C*s, kv_len]
        probs = torch.softmax(logits.masked_fill_(future, -math.inf), dim=-1)
        by_block = F.pad(probs, (0, kb_dim * block - kv_len)).view(heads, chunk.shape[0], samples, kb_dim, block)
        out.append(by_block.sum(-1).mean(2))
    return torch.cat(out, 1)


@dataclass(frozen=True)
class BlockMass:
    """Each query block keeps the fewest key blocks whose estimated attention mass reaches ``threshold``.

    The estimated share ``p[g, b]`` of key block ``b`` in query block ``g``'s attention, over the key
    blocks it reaches causally, comes from ``estimator``:

    - ``"pooled"``: queries and keys mean-pooled per ``block_size`` rows as in `BlockTopK`,
      ``p[g, b] = softmax_b(q_pool[g] . k_pool[b] / sqrt(D))``. One product per block pair, but a key
      block's mean dilutes the few keys a row attends to, so shares come out flat;
    - ``"sampled"``: ``samples`` real query rows of the block, ``r_j = first + ceil((j + 1) L / s) - 1``
      for ``j < s = samples`` (``L`` its in-bounds rows, so the last row is always one), each an fp32
      softmax over every key it sees (``k <= q_pos``, scaled by ``1/sqrt(D)``); ``p[g, b]`` is the mean
      over the sampled rows of the probability falling in key block ``b``. Sharper, at the price of
      ``samples / block_size`` of the attention's score products.

    Blocks are taken in order: forced ones first (the sink block and
    the blocks holding the query block's own positions), then by decreasing share, ties to the lower
    block; a block is kept while the mass taken before it is below ``threshold``. So a peaked row keeps a
    handful of blocks and a flat one many, where `BlockTopK` keeps the same count everywhere. The
    estimate is a `BlockTopKTiles` (mask ``k <= q_pos`` and the tile kept), lowered and computed by the
    same kernel; per-head thresholds are a tuple.

    >>> BlockMass(0.9)
    BlockMass(threshold=0.9, block_size=64, estimator='pooled', samples=4)
    """

    threshold: Threshold
    block_size: int = 64
    estimator: str = "pooled"
    samples: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        check_int("block_size", self.block_size, 32)
        if self.block_size % 32:
            raise ValueError(f"block_size: expected a multiple of 32, got {self.block_size}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {self.estimator!r}")
        check_int("samples", self.samples, 1)
        if self.samples > self.block_size:
            raise ValueError(f"samples: expected at most block_size={self.block_size} rows, got {self.samples}")

    @property
    def num_heads(self) -> int | None:
        return len(self.threshold) if isinstance(self.threshold, tuple) else None

    def shares(self, q: Tensor, k: Tensor) -> Tensor:
        """``[Hq, QB, KB]`` fp32 estimated attention share of each key block, 0 out of causal reach."""
        check_qk(q, k)
        reach, _ = reachable_blocks(q.shape[2], k.shape[2], self.block_size, q.device)
        return self._shares(q, k, reach)

    def _shares(self, q: Tensor, k: Tensor, reach: Tensor) -> Tensor:
        if self.estimator == "sampled":
            return sampled_block_shares(q, k, self.block_size, self.samples)
        logits = BlockTopK(1, self.block_size).pooled_scores(q, k) / math.sqrt(q.shape[-1])
        return torch.softmax(logits.masked_fill(~reach, -math.inf), dim=-1)

    def estimate(self, q: Tensor, k: Tensor) -> BlockTopKTiles:
        """The kept tiles for ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``; no host synchronisation."""
        check_qk(q, k)
        heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
        threshold = per_head_tensor("threshold", self.threshold, heads, torch.float32, q.device)
        reach, forced = reachable_blocks(q_len, kv_len, self.block_size, q.device)
        p = self._shares(q, k, reach)
        # Forced blocks sort first (+inf); a stable sort keeps equal shares in block order.
        order = torch.sort(torch.where(forced, math.inf, p), dim=-1, descending=True, stable=True).indices
        sorted_p = p.gather(-1, order)
        taken = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass before each block
        keep_sorted = (taken < threshold.view(-1, 1, 1)) | forced.expand_as(p).gather(-1, order)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        return BlockTopKTiles(keep & reach, self.block_size, q_len, kv_len)
