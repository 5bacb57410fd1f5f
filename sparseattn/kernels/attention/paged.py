"""`paged_sparse_attention`: the forward kernel reading K/V from a paged KV cache through a block table.

Serving engines keep K/V in fixed-size pages shared by all sequences, and each sequence lists its pages
in a block table (vLLM's ``block_tables``, SGLang's ``req_to_token``; `docs/serving.md`). This entry
takes that cache as it is: ``k_pages, v_pages`` ``[num_pages, page_size, Hkv, D]``, the layout of vLLM's
FlashAttention backend (``[2, num_blocks, block_size, num_kv_heads, head_size]`` split in two), and
``block_table`` ``[B, pages]`` int32 with logical page ``i`` of sequence ``b`` at physical page
``block_table[b, i]``. Other page layouts pass as views with the same logical shape, e.g.
``[num_pages, Hkv, page_size, D]`` as ``pages.permute(0, 2, 1, 3)``: the kernel reads by strides (the
head dim must be contiguous).

The kernel is `triton_fwd.py`'s, compiled with ``PAGED``: ``page_size`` must be a multiple of the
layout's ``block_n``, so that every key block lies inside one page, and each tile costs one block-table
load. K/V are read by pointer loads with int64 addresses, never through TMA descriptors, so the
Gluon warp-specialised launch and ``tma`` configs are refused. Every sequence of the batch has the
layout's ``kv_len`` keys (the first ``kv_len`` slots of its pages; queries aligned bottom-right as
always): batches of prompts of different lengths (varlen) are the next piece, `docs/serving.md`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseattn.kernels.attention.config import (
    SUPPORTED_BLOCKS,
    SUPPORTED_HEAD_DIMS,
    KernelConfig,
    warp_specialized_unsupported,
)
from sparseattn.kernels.attention.launch import launch_forward
from sparseattn.kernels.interpreter import check_kernel_device
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.layout import BlockLayout


def paged_config(layout: BlockLayout, head_dim: int) -> KernelConfig:
    """The pointer-load launch `default_config` takes where there is no TMA: 8 warps on long 128-row
    tiles, else 4 warps with FULL tiles by index."""
    if layout.block_m >= 128 and head_dim >= 64:
        return KernelConfig(num_warps=8, num_stages=2)
    return KernelConfig(num_warps=4, num_stages=2, full_runs=False)


def _check(
    q: Tensor, k_pages: Tensor, v_pages: Tensor, block_table: Tensor, layout: BlockLayout, check_pages: bool
) -> None:
    for name, t in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages), ("block_table", block_table)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        check_kernel_device(name, t.device)
        if t.device != q.device:
            raise ValueError(f"{name}: expected the device of q ({q.device}), got {t.device}")
    if q.dim() != 4 or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"q: expected [B, Hq, q_len, D] in float16, bfloat16 or float32, got {tuple(q.shape)} {q.dtype}"
        )
    batch, heads, q_len, dim = q.shape
    for name, t in (("k_pages", k_pages), ("v_pages", v_pages)):
        if t.dim() != 4 or t.dtype != q.dtype or t.shape[3] != dim or t.stride(3) != 1:
            raise ValueError(
                f"{name}: expected [num_pages, page_size, Hkv, {dim}] in {q.dtype} with a contiguous head dim, "
                f"got {tuple(t.shape)} {t.dtype} with strides {t.stride()}"
            )
    if v_pages.shape != k_pages.shape:
        raise ValueError(f"v_pages: expected the shape of k_pages {tuple(k_pages.shape)}, got {tuple(v_pages.shape)}")
    num_pages, page_size, kv_heads, _ = k_pages.shape
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"k_pages: its {kv_heads} kv heads must divide the {heads} query heads of q")
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dim expected one of {SUPPORTED_HEAD_DIMS}, got {dim}")
    if layout.device != q.device:
        raise ValueError(f"layout: expected it on {q.device}, got {layout.device} (use layout.to(device))")
    if layout.block_m not in SUPPORTED_BLOCKS or layout.block_n not in SUPPORTED_BLOCKS:
        raise ValueError(
            f"layout: block_size expected (block_m, block_n) each in {SUPPORTED_BLOCKS}, got {layout.block_size}"
        )
    if layout.q_len != q_len:
        raise ValueError(f"layout: built for q_len={layout.q_len}, q has q_len={q_len}")
    if layout.batch_size not in (1, batch) or layout.num_heads not in (1, heads):
        raise ValueError(
            f"layout: expected batch 1 or {batch} and heads 1 or {heads}, "
            f"got batch {layout.batch_size} and heads {layout.num_heads}"
        )
    if page_size % layout.block_n:
        raise ValueError(
            f"k_pages: page_size {page_size} must be a multiple of the layout's block_n {layout.block_n} "
            "(a key block lies inside one page)"
        )
    pages = -(-layout.kv_len // page_size)
    if block_table.dim() != 2 or block_table.dtype != torch.int32 or block_table.shape[0] != batch:
        raise ValueError(
            f"block_table: expected int32 [{batch}, >= {pages}], got {block_table.dtype} {tuple(block_table.shape)}"
        )
    if block_table.shape[1] < pages:
        raise ValueError(
            f"block_table: kv_len={layout.kv_len} keys need {pages} pages of {page_size}, "
            f"the table lists {block_table.shape[1]}"
        )
    if check_pages:
        used = block_table[:, :pages]
        lo, hi = int(used.min()), int(used.max())
        if lo < 0 or hi >= num_pages:
            raise ValueError(f"block_table: page ids must lie in [0, {num_pages}), got {lo} to {hi}")


def paged_sparse_attention(
    q: Tensor,
    k_pages: Tensor,
    v_pages: Tensor,
    block_table: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    config: KernelConfig | None = None,
    max_chunk: int | None = None,
    check_pages: bool = True,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention of ``q`` [B, Hq, q_len, D] over a paged KV cache, on ``layout``.

    ``k_pages, v_pages`` ``[num_pages, page_size, Hkv, D]`` (see the module docstring), ``block_table``
    int32 ``[B, >= ceil(kv_len / page_size)]``; every sequence holds ``layout.kv_len`` keys. Returns
    ``(out [B, Hq, q_len, D] in q.dtype, lse [B, Hq, q_len] float32)`` as `triton_sparse_attention` does on
    the same keys stored contiguously. ``check_pages`` reads the table's page ids on the host (one
    synchronisation); pass False in timing loops and CUDA graphs. ``config`` must leave ``tma``,
    ``q_in_registers`` and ``warp_specialized`` off (default `paged_config`).
    """
    _check(q, k_pages, v_pages, block_table, layout, check_pages)
    batch, heads, _, dim = q.shape
    kv_heads = k_pages.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_table = block_table.contiguous()  # the kernel steps along a row by 1
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale}")
    config = config or paged_config(layout, dim)
    if config.warp_specialized:
        raise ValueError(f"config: warp_specialized {warp_specialized_unsupported(layout, dim, q.dtype, paged=True)}")
    if config.tma or config.q_in_registers:
        raise ValueError(
            "config: tma and q_in_registers load through tensor descriptors; the paged path uses pointer loads"
        )
    if config.pack > 1 and (layout.num_heads != 1 or (heads // kv_heads) % config.pack):
        raise ValueError(
            f"config: pack={config.pack} needs a layout shared by all heads (got {layout.num_heads} heads) "
            f"and a GQA group divisible by it (got {heads // kv_heads})"
        )
    work = work_list(layout, batch, heads, max_chunk=max_chunk, pack=config.pack, runs=config.full_runs)
    # The batch is in the block table: K/V's batch strides are unread, their head and position strides
    # are the pages' (dims 2 and 1); descriptors are unread without TMA.
    kv_strides = (0, k_pages.stride(2), k_pages.stride(1), 0, v_pages.stride(2), v_pages.stride(1))
    paged = {
        "BLOCK_TABLE": block_table,
        "stride_tb": block_table.stride(0),
        "stride_kp": k_pages.stride(0),
        "stride_vp": v_pages.stride(0),
        "PAGE_SIZE": k_pages.shape[1],
        "PAGED": True,
    }
    kv = (k_pages, v_pages)
    return launch_forward(q, kv, (q, *kv), kv_strides, kv_heads, layout, work, config, scale, paged)
