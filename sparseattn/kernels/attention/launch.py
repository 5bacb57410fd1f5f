"""`triton_sparse_attention`: validates inputs against a layout, plans the work list, and launches the
forward kernel (`triton_fwd.py`) or, where `KernelConfig.warp_specialized` asks for it, its Gluon
twin (`gluon_fwd.py`); split rows are merged by `triton_merge.py`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from sparseattn.kernels.attention.config import (
    LOG2E,
    SUPPORTED_BLOCKS,
    SUPPORTED_HEAD_DIMS,
    KernelConfig,
    default_config,
    warp_specialized_unsupported,
)
from sparseattn.kernels.attention.gluon_fwd import gluon_sparse_attention
from sparseattn.kernels.attention.triton_fwd import _sparse_fwd_kernel
from sparseattn.kernels.attention.triton_merge import merge_partials
from sparseattn.kernels.interpreter import check_kernel_device, interpreting
from sparseattn.kernels.planning.work_list import WorkList, work_list
from sparseattn.layout import BlockLayout


def _check(q: Tensor, k: Tensor, v: Tensor, layout: BlockLayout) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_kernel_device(name, t.device)
        if t.dim() != 4:
            raise ValueError(f"{name}: expected [B, H, S, D], got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name}: expected float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if layout.device != q.device:
        raise ValueError(f"layout: expected it on {q.device}, got {layout.device} (use layout.to(device))")
    batch, heads, q_len, dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != dim or heads % k.shape[1]:
        raise ValueError(
            f"k, v: expected [{batch}, Hkv, kv_len, {dim}] with Hkv dividing {heads}, "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dim expected one of {SUPPORTED_HEAD_DIMS}, got {dim}")
    if layout.block_m not in SUPPORTED_BLOCKS or layout.block_n not in SUPPORTED_BLOCKS:
        raise ValueError(
            f"layout: block_size expected (block_m, block_n) each in {SUPPORTED_BLOCKS}, "
            f"got {layout.block_size}; lower with preferred_block_size({dim}, {q.dtype})"
        )
    if (layout.q_len, layout.kv_len) != (q_len, k.shape[2]):
        raise ValueError(
            f"layout: built for q_len={layout.q_len}, kv_len={layout.kv_len}, "
            f"inputs have q_len={q_len}, kv_len={k.shape[2]}"
        )
    if layout.batch_size not in (1, batch) or layout.num_heads not in (1, heads):
        raise ValueError(
            f"layout: expected batch 1 or {batch} and heads 1 or {heads}, "
            f"got batch {layout.batch_size} and heads {layout.num_heads}"
        )


def _new_outputs(q: Tensor, slots: int, block_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised out, lse and split-row scratch (tests replace this to poison them with NaN)."""
    batch, heads, q_len, dim = q.shape
    return (
        torch.empty_like(q),
        torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device),
        torch.empty(slots, block_m, dim, dtype=torch.float32, device=q.device),
        torch.empty(slots, block_m, dtype=torch.float32, device=q.device),
    )


@functools.cache
def _placeholder(device: torch.device) -> Tensor:
    """Stands for an empty or absent list, which the kernel never reads but still wants a pointer for
    (one per device, not allocated on every call)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def triton_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    max_chunk: int | None = None,
    heavy_first: bool | None = None,
    config: KernelConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention of ``q`` [B, Hq, q_len, D] over ``k, v`` [B, Hkv, kv_len, D] on ``layout``.

    Returns ``(out [B, Hq, q_len, D] in q.dtype, lse [B, Hq, q_len] float32)``, lse in natural log.
    ``max_chunk`` caps the tiles one program runs for a row (``None``: from the work size and the number
    of multiprocessors; ``0``: never split); ``heavy_first=None`` balances only layouts whose rows are
    unequal (a triangle's last rows), ``heavy_first=False`` and ``max_chunk=0`` give the plain,
    unbalanced grid (for measuring the balancing). A ``device_built`` layout with both left ``None``
    runs heaviest rows first without splitting, planned without any host synchronisation (see
    `BlockLayout`). ``config`` overrides warps, stages, TMA and head packing. Under Triton's interpreter
    (``TRITON_INTERPRET=1``) bfloat16 inputs are computed in float32 and the output returned in bfloat16.
    """
    _check(q, k, v, layout)
    if q.dtype == torch.bfloat16 and interpreting():
        # Triton's interpreter computes bfloat16 tl.dot wrongly (every output ~1e8): compute in float32.
        out, lse = triton_sparse_attention(
            q.float(),
            k.float(),
            v.float(),
            layout,
            scale=scale,
            max_chunk=max_chunk,
            heavy_first=heavy_first,
            config=config,
        )
        return out.to(torch.bfloat16), lse
    batch, heads, _, dim = q.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale: expected a positive float (the kernel folds it into the running max), got {scale}")
    config = config or default_config(layout, dim, heads // k.shape[1], q.dtype)
    if config.warp_specialized:
        reason = warp_specialized_unsupported(layout, dim, q.dtype)
        if reason is not None:
            raise ValueError(f"config: warp_specialized {reason}")
    if config.tma and not config.warp_specialized:  # the Gluon launch builds its own descriptors
        # Descriptors need contiguous rows and a 16-byte aligned base (a view may start mid-allocation).
        k, v = (
            t.contiguous() if t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format) for t in (k, v)
        )
        if k.numel() // dim >= 2**31:
            raise ValueError(f"k: {tuple(k.shape)} has over 2**31 rows, beyond a tensor descriptor; use tma=False")
        k_desc = TensorDescriptor.from_tensor(k.view(-1, dim), [layout.block_n, dim])
        v_desc = TensorDescriptor.from_tensor(v.view(-1, dim), [layout.block_n, dim])
    else:
        k_desc, v_desc = k, v  # unread: the pointer path is compiled, or the Gluon launch runs
    q_desc = q  # unread unless q_in_registers
    if config.q_in_registers:
        if q.data_ptr() % 16 or any(s * q.element_size() % 16 for s in q.stride()[:-1]):
            q = q.clone(memory_format=torch.contiguous_format)  # a descriptor's base and strides: 16-byte aligned
        # The packed heads' query blocks as one box of q [B, H, S, D], whatever q's (aligned) strides.
        q_desc = TensorDescriptor.from_tensor(q, [1, config.pack, layout.block_m, dim])
    if config.pack > 1 and (layout.num_heads != 1 or (heads // k.shape[1]) % config.pack):
        raise ValueError(
            f"config: pack={config.pack} needs a layout shared by all heads (got {layout.num_heads} heads) "
            f"and a GQA group divisible by it (got {heads // k.shape[1]})"
        )
    if config.warp_specialized and heavy_first is None and not layout.device_built:
        # One warp-specialised program fills a multiprocessor, so the grid's last wave is long: heaviest
        # rows first even when rows are near-uniform (dense causal), where Triton's launch, two or more
        # programs per multiprocessor, measured faster in grid order (triton_schedule.UNEQUAL_ROWS).
        heavy_first = True
    work = work_list(
        layout, batch, heads, max_chunk=max_chunk, heavy_first=heavy_first, pack=config.pack, runs=config.full_runs
    )

    if config.warp_specialized:
        out, lse, out_part, lse_part = _new_outputs(q, max(work.num_slots, 1), layout.block_m)
        outputs = (out, lse, out_part, lse_part)
        gluon_sparse_attention(q, k, v, layout.block_n, work, tile_lists(layout), outputs, scale * LOG2E, config)
        merge_partials(out, lse, out_part, lse_part, work.merges, layout.block_m)
        return out, lse
    kv_strides = (k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2))
    return launch_forward(q, (k, v), (q_desc, k_desc, v_desc), kv_strides, k.shape[1], layout, work, config, scale)


def _arg(t: Tensor | None, device: torch.device) -> Tensor:
    """A list for the kernel: contiguous, or the placeholder where it is absent or empty."""
    return _placeholder(device) if t is None or t.numel() == 0 else t.contiguous()


def tile_lists(layout: BlockLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The layout's FULL list, PARTIAL list, bitmap ids and bitmaps as the kernels take them."""
    device = layout.device
    full, partial, mask_ids, masks = (
        _arg(t, device) for t in (layout.full_kv_indices, layout.kv_indices, layout.kv_mask_ids, layout.tile_masks)
    )
    return full, partial, mask_ids, masks


def launch_forward(
    q: Tensor,
    kv: tuple[Tensor, Tensor],
    descriptors: tuple[object, object, object],
    kv_strides: tuple[int, int, int, int, int, int],
    kv_heads: int,
    layout: BlockLayout,
    work: WorkList,
    config: KernelConfig,
    scale: float,
    paged: dict[str, object] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the Triton forward kernel over a planned work list and merge the split rows: ``(out, lse)``.

    ``kv`` are K and V as the kernel addresses them (contiguous ``[B, Hkv, kv_len, D]`` or cache pages),
    ``descriptors`` the (q, k, v) tensor descriptors or, unread without TMA, any tensor; ``kv_strides``
    the (batch, head, position) strides of K, then of V; ``paged`` the block-table arguments of a paged
    cache (`paged_sparse_attention`), None for contiguous K/V.
    """
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    out, lse, out_part, lse_part = _new_outputs(q, max(work.num_slots, 1), layout.block_m)
    _sparse_fwd_kernel[(work.items.shape[0],)](
        q,
        *kv,
        *descriptors,
        out,
        lse,
        out_part,
        lse_part,
        work.items,
        work.items.stride(0),
        *tile_lists(layout),
        _arg(layout.col_num, q.device),
        _arg(layout.col_start, q.device),
        _arg(layout.col_indices, q.device),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        *kv_strides,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        lse.stride(0),
        lse.stride(1),
        q_len,
        layout.kv_len,
        heads // kv_heads,
        kv_heads,
        scale * LOG2E,
        BLOCK_M=layout.block_m,
        BLOCK_N=layout.block_n,
        HEAD_DIM=dim,
        EVEN_KV=layout.kv_len % layout.block_n == 0,
        HAS_COLS=layout.col_num is not None,
        NUM_STAGES=config.num_stages,
        USE_TMA=config.tma,
        PACK=config.pack,
        FULL_RUNS=config.full_runs,
        Q_IN_REGISTERS=config.q_in_registers,
        num_warps=config.num_warps,
        **(paged or {}),
        **({"maxnreg": config.max_registers} if config.max_registers else {}),
    )
    merge_partials(out, lse, out_part, lse_part, work.merges, layout.block_m)
    return out, lse
