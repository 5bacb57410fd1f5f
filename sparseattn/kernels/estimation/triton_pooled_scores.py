"""Block top-k's pooled scores on the GPU: block means of q and k, then their dot products, causal half only.

`sparseattn.estimation.block_topk` defines the scores with torch (its path is the oracle and the
CPU path): fp32 means of each ``block`` rows, then an fp32 batched matmul over the whole
``[Hq, QB, KB]`` grid. That is slow on the GPU (``block_topk_pooled_scores`` in the dynamic
benchmark): the reduction converts q to fp32 first, and cuBLAS runs the fp32
product on CUDA
cores over both halves of the grid, although a query block never reaches the key blocks after it.

Here the means are one read of q and k in their own dtype, and the scores are computed only for tiles
with some causally reachable pair, with ``tl.dot(input_precision="tf32x3")``: three tensor-core TF32
products that carry fp32's accuracy (the split of each operand keeps its low bits), not TF32's. Entries
out of causal reach are written as ``-inf``, which is what the selection makes of them anyway. The
result differs from the torch scores only by fp32 rounding (summation order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

SCORE_TILE = 64


@triton.jit
def _block_means_kernel(X, Out, stride_h, stride_s, length, n_blocks, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    nb = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    rows = nb * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    inside = rows < length
    x = tl.load(X + h * stride_h + rows[:, None] * stride_s + offs_d[None, :], mask=inside[:, None], other=0.0)
    count = tl.minimum(length - nb * BLOCK, BLOCK).to(tl.float32)  # in-bounds rows of the block
    mean = tl.sum(x.to(tl.float32), 0) / count  # [HEAD_DIM]
    tl.store(Out + (h * n_blocks + nb) * HEAD_DIM + offs_d, mean)


@triton.jit
def _pooled_scores_kernel(
    QP,
    KP,
    Out,
    q_blocks,
    k_blocks,
    group,
    q_len,
    kv_len,
    block,
    TILE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    tile_g = tl.program_id(0)
    tile_b = tl.program_id(1)
    h = tl.program_id(2).to(tl.int64)
    g = tile_g * TILE + tl.arange(0, TILE)  # [TILE] query blocks
    b = tile_b * TILE + tl.arange(0, TILE)  # [TILE] key blocks
    in_g = g < q_blocks
    in_b = b < k_blocks
    # Last (bottom-right aligned) query position of each query block, first key of each key block.
    last = tl.minimum((g + 1) * block, q_len) - 1 + (kv_len - q_len)  # [TILE]
    reach = (b[None, :] * block <= last[:, None]) & in_b[None, :]  # [TILE, TILE]
    out_ptrs = Out + (h * q_blocks + g[:, None].to(tl.int64)) * k_blocks + b[None, :]
    store_mask = in_g[:, None] & in_b[None, :]
    # The tile's last query block reaches furthest: past it, nothing is reachable.
    tile_last = tl.minimum((tile_g * TILE + TILE) * block, q_len) - 1 + (kv_len - q_len)
    if tile_b * TILE * block > tile_last:
        tl.store(out_ptrs, tl.full([TILE, TILE], float("-inf"), tl.float32), mask=store_mask)
    else:
        offs_d = tl.arange(0, HEAD_DIM)
        qp_ptrs = QP + (h * q_blocks + g[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
        qp = tl.load(qp_ptrs, mask=in_g[:, None], other=0.0)  # [TILE, HEAD_DIM]
        kv_head = h // group
        kp_ptrs = KP + (kv_head * k_blocks + b[:, None].to(tl.int64)) * HEAD_DIM + offs_d[None, :]
        kp = tl.load(kp_ptrs, mask=in_b[:, None], other=0.0)  # [TILE, HEAD_DIM]
        scores = tl.dot(qp, tl.trans(kp), input_precision=INPUT_PRECISION)  # [TILE, TILE] fp32
        tl.store(out_ptrs, tl.where(reach, scores, float("-inf")), mask=store_mask)


def triton_block_means(x: Tensor, block: int) -> Tensor:
    """``x [H, S, D]`` (any float dtype, unit stride on D) -> ``[H, ceil(S / block), D]`` fp32 means over
    each block's in-bounds rows."""
    heads, length, dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    n_blocks = -(-length // block)
    out = torch.empty(heads, n_blocks, dim, dtype=torch.float32, device=x.device)
    if heads * n_blocks:
        _block_means_kernel[(n_blocks, heads)](
            x, out, x.stride(0), x.stride(1), length, n_blocks, BLOCK=block, HEAD_DIM=dim, num_warps=4
        )
    return out


def triton_pooled_scores(q_pool: Tensor, k_pool: Tensor, *, q_len: int, kv_len: int, block: int) -> Tensor:
    """``[Hq, QB, KB]`` fp32 ``q_pool @ k_pool^T`` where some pair of the tiles is causal, ``-inf`` elsewhere.

    ``q_pool [Hq, QB, D]``, ``k_pool [Hkv, KB, D]`` fp32 (query head ``h`` reads kv head ``h // (Hq // Hkv)``).
    """
    heads, q_blocks, dim = q_pool.shape
    kv_heads, k_blocks = k_pool.shape[:2]
    q_pool, k_pool = q_pool.contiguous(), k_pool.contiguous()
    out = torch.empty(heads, q_blocks, k_blocks, dtype=torch.float32, device=q_pool.device)
    grid = (triton.cdiv(q_blocks, SCORE_TILE), triton.cdiv(k_blocks, SCORE_TILE), heads)
    if heads * q_blocks * k_blocks:
        _pooled_scores_kernel[grid](
            q_pool,
            k_pool,
            out,
            q_blocks,
            k_blocks,
            heads // kv_heads,
            q_len,
            kv_len,
            block,
            TILE=SCORE_TILE,
            HEAD_DIM=dim,
            # The interpreter multiplies in fp32 whatever it is told; tf32x3 needs tensor cores.
            INPUT_PRECISION="tf32x3" if q_pool.is_cuda else "ieee",
            num_warps=4,
        )
    return out
