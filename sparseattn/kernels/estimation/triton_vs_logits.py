"""Scaled, causally masked fp32 logits of the last query rows over all keys, for vertical-slash estimation.

MInference estimates a vertical-slash pattern from the softmax of the last ``n = min(last_q, q_len)``
query rows over every key. Computed in torch (``sparseattn.estimation.vs_scores``) that costs, at 128K
tokens (q [1, 32, 131072, 128] bf16, k [1, 8, 131072, 128] bf16, n = 64), an fp32 copy of all of k
(512 MB), an fp32 batched matmul and a separate pass to apply the scale.
This kernel reads q and k in their own dtype, accumulates in fp32 and writes the final logits

    out[h, r, c] = scale * dot(q[0, h, q_len - n + r], k[0, h // group, c])   if c <= kv_len - n + r
                 = -inf                                                        otherwise

as ``[Hq, n, kv_len]`` fp32 in one pass; the caller's ``torch.softmax`` is unchanged.

GQA without repeating k: a program owns one kv head and one chunk of ``BLOCK_N`` keys, loads that K tile
once and runs every query row of the head's group (``group * n`` rows, 256 for Llama-8B shapes) through it
as the M dimension of ``tl.dot``, ``BLOCK_M`` rows at a time. The output, not the matmul, is the bulk of
the traffic (``Hq * n * kv_len`` fp32, 1 GiB at 128K), so the tiles are shaped for wide, coalesced stores.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparseattn.kernels.interpreter import check_kernel_device

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


@triton.jit
def _last_query_logits_kernel(
    Q,
    K,
    Out,
    stride_qh,
    stride_qs,
    stride_kh,
    stride_ks,
    q_len,
    kv_len,
    n,
    group,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    IEEE: tl.constexpr,
):
    # Key chunks on axis 0: its limit is 2**31 - 1, axis 1's only 65535 (1M tokens / 64 = 16384 chunks).
    chunk = tl.program_id(0)
    kv_head = tl.program_id(1).to(tl.int64)

    offs_n = chunk.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] key position
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    in_kv = offs_n < kv_len

    k_ptrs = K + kv_head * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :]  # [BLOCK_N, HEAD_DIM]
    k = tl.load(k_ptrs, mask=in_kv[:, None], other=0.0)  # [BLOCK_N, HEAD_DIM]
    kt = tl.trans(k)  # [HEAD_DIM, BLOCK_N]

    rows = group * n  # the group's query rows: row m is query head kv_head * group + m // n, last row m % n
    first_q = q_len - n
    # The group's rows are consecutive rows of the [Hq * n, kv_len] output, starting at kv_head * rows.
    out_base = Out + kv_head * rows * kv_len
    for m0 in range(0, rows, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        in_rows = offs_m < rows
        head = kv_head * group + offs_m // n  # [BLOCK_M] query head
        r = offs_m % n  # [BLOCK_M] index among the last rows
        q_ptrs = Q + head[:, None] * stride_qh + (first_q + r)[:, None].to(tl.int64) * stride_qs + offs_d[None, :]
        q = tl.load(q_ptrs, mask=in_rows[:, None], other=0.0)  # [BLOCK_M, HEAD_DIM]
        if IEEE:
            # fp32 inputs must stay fp32: the default on Hopper would round them to TF32.
            acc = tl.dot(q, kt, input_precision="ieee", out_dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
        else:
            acc = tl.dot(q, kt, out_dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
        # Row r sits at position kv_len - n + r and sees keys up to it (bottom-right causal alignment).
        visible = offs_n[None, :] <= (kv_len - n + r)[:, None].to(tl.int64)  # [BLOCK_M, BLOCK_N]
        logits = tl.where(visible, acc * scale, float("-inf"))  # [BLOCK_M, BLOCK_N]
        out_ptrs = out_base + offs_m[:, None].to(tl.int64) * kv_len + offs_n[None, :]  # [BLOCK_M, BLOCK_N]
        tl.store(out_ptrs, logits, mask=in_rows[:, None] & in_kv[None, :])


def last_query_inputs(q: Tensor, k: Tensor, n: int, scale: float) -> tuple[Tensor, Tensor]:
    """``(q, k)`` as the last-query kernels read them (unit last stride, copied only where it is not),
    after `_check`."""
    _check(q, k, n, scale)
    return (q if q.stride(-1) == 1 else q.contiguous()), (k if k.stride(-1) == 1 else k.contiguous())


def _check(q: Tensor, k: Tensor, n: int, scale: float) -> None:
    """The inputs the last-query kernels accept, each rejected by name."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a tensor [1, H, S, D], got {type(t).__name__}")
        check_kernel_device(name, t.device)
        if t.dim() != 4 or t.shape[0] != 1:
            raise ValueError(f"{name}: expected [1, H, S, D], got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name}: expected float16, bfloat16 or float32, got {t.dtype}")
    if q.dtype != k.dtype:
        raise ValueError(f"q, k: expected one dtype, got {q.dtype}, {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"k: expected it on {q.device} with q, got {k.device}")
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dim expected one of {SUPPORTED_HEAD_DIMS}, got {dim}")
    if k.shape[3] != dim or k.shape[1] == 0 or heads % k.shape[1]:
        raise ValueError(f"k: expected [1, Hkv, kv_len, {dim}] with Hkv dividing {heads}, got {tuple(k.shape)}")
    if not 0 < q_len <= k.shape[2]:
        raise ValueError(f"q: expected 0 < q_len <= kv_len, got q_len={q_len}, kv_len={k.shape[2]}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= q_len:
        raise ValueError(f"n: expected an int in 1..q_len={q_len}, got {n!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float, got {scale!r}")


def _new_output(heads: int, n: int, kv_len: int, device: torch.device) -> Tensor:
    """Uninitialised logits (tests replace this to poison them with NaN)."""
    return torch.empty(heads, n, kv_len, dtype=torch.float32, device=device)


def triton_last_query_logits(q: Tensor, k: Tensor, n: int, scale: float) -> Tensor:
    """fp32 ``[Hq, n, kv_len]``: ``scale * q k^T`` of the last ``n`` rows of ``q`` [1, Hq, q_len, D] over
    ``k`` [1, Hkv, kv_len, D], -inf above the causal diagonal (row ``r`` sits at ``kv_len - n + r``).

    Query head ``h`` reads kv head ``h // (Hq // Hkv)``; k is neither repeated nor copied to fp32.
    No host synchronisation.
    """
    q, k = last_query_inputs(q, k, n, scale)
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    out = _new_output(heads, n, kv_len, q.device)
    # 128 keys give 512-byte fp32 output rows per store; wider K rows (D=256 in 16 bits, D>=128 in fp32)
    # halve the keys so the K tile stays at 32-64 KB of shared memory next to the Q tile.
    block_n = 128 if dim * q.element_size() <= 256 else 64
    # M=64 is one Hopper warpgroup MMA, run by 4 warps; tiny groups (n < 16) still need tl.dot's minimum 16.
    block_m = min(64, max(16, triton.next_power_of_2(group * n)))
    grid = (triton.cdiv(kv_len, block_n), kv_heads)
    _last_query_logits_kernel[grid](
        q,
        k,
        out,
        q.stride(1),
        q.stride(2),
        k.stride(1),
        k.stride(2),
        q_len,
        kv_len,
        n,
        group,
        float(scale),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        HEAD_DIM=dim,
        IEEE=q.dtype == torch.float32,
        num_warps=4,
    )
    return out
