"""The tiles some slash crosses (vertical-slash ``form="block"``), decided on the GPU in one launch.

Same contract as the torch oracle `VerticalSlashIndices.torch_tile_grid`, which spends about sixty small
torch operations on it (each a launch the host must issue: on a real model's layer the estimation and
lowering cost more in launches than in arithmetic). Tile ``(qb, kb)`` of head ``h`` spans the diagonals
``d = q_pos - k`` from ``first(qb) - last_key(kb)`` to ``last(qb) - first_key(kb)``; it is kept when the
head's prefix counts of slashes differ across that range. One program takes ``BLOCK_Q`` query blocks of
one head and walks the key blocks ``BLOCK_K`` at a time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_Q = 16  # query blocks per program
BLOCK_K = 128  # key blocks per step


@triton.jit
def _slash_tiles_kernel(
    PREFIX, KEEP,
    stride_ph, stride_kh, stride_kq,
    q_len, kv_len, num_qb, num_kb,
    B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    qb = tl.program_id(1).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q]
    offset = kv_len - q_len  # bottom-right alignment: query row r sits at position r + offset
    first = qb * B + offset  # [BLOCK_Q] first in-bounds query position of each block
    last = tl.minimum((qb + 1) * B, q_len) - 1 + offset
    prefix = PREFIX + h * stride_ph
    for kb0 in range(0, num_kb, BLOCK_K):
        kb = kb0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_lo = kb * B
        k_hi = tl.minimum((kb + 1) * B, kv_len) - 1
        lo = tl.minimum(tl.maximum(first[:, None] - k_hi[None, :], 0), kv_len)  # [BLOCK_Q, BLOCK_K]
        hi = tl.minimum(tl.maximum(last[:, None] - k_lo[None, :] + 1, 0), kv_len)
        inside = (qb[:, None] < num_qb) & (kb[None, :] < num_kb)  # [BLOCK_Q, BLOCK_K]
        below = tl.load(prefix + lo, mask=inside, other=0)  # slashes under the tile's smallest diagonal
        through = tl.load(prefix + hi, mask=inside, other=0)  # ... up to its largest
        crossed = (through > below).to(tl.int8)
        tl.store(KEEP + h * stride_kh + qb[:, None] * stride_kq + kb[None, :], crossed, mask=inside)


def triton_slash_tiles(prefix: Tensor, q_len: int, kv_len: int, block: int) -> Tensor:
    """bool ``[H, QB, KB]``: the ``block`` x ``block`` tiles some slash crosses, from ``prefix`` (int
    ``[H, kv_len + 1]``: entry ``x`` counts the head's slashes below ``x``, `vs_indices._prefix`); on
    ``prefix``'s device, no host sync."""
    if prefix.dim() != 2 or prefix.shape[1] != kv_len + 1 or prefix.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"prefix: expected an int [H, {kv_len + 1}] tensor, got {prefix.dtype} {tuple(prefix.shape)}")
    heads = prefix.shape[0]
    num_qb, num_kb = triton.cdiv(q_len, block), triton.cdiv(kv_len, block)
    keep = torch.empty(heads, num_qb, num_kb, dtype=torch.int8, device=prefix.device)
    if heads and num_qb and num_kb:
        prefix = prefix.contiguous()
        _slash_tiles_kernel[(heads, triton.cdiv(num_qb, BLOCK_Q))](
            prefix, keep,
            prefix.stride(0), keep.stride(0), keep.stride(1),
            q_len, kv_len, num_qb, num_kb,
            B=block, BLOCK_Q=BLOCK_Q, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    return keep.view(torch.bool)
