"""FlexAttention on a `BlockLayout`: a second oracle and the baseline every speed claim is held against."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout


def flex_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout | Any,
    *,
    scale: float | None = None,
    compiled: bool | None = None,
    kernel_options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``torch.nn.attention.flex_attention`` with ``layout.to_flex()`` (or a ready ``BlockMask``).

    ``kernel_options`` go to FlexAttention; by default they match its tiles to a layout with blocks
    smaller than 128. ``compiled`` defaults to True on CUDA (FlexAttention's fast path) and False on the CPU, where the
    eager path is the portable one. Returns ``(out, lse)`` like every backend; rows with nothing to
    attend give 0 and ``-inf``. The lse is a constant for the gradient; a caller that differentiates and
    needs no lse calls `flex_sparse_attention_output` instead (see `_flex_with_constant_lse` for why).
    """
    out, lse = _run(_flex_with_constant_lse, q, k, v, layout, scale, compiled, kernel_options)
    # Flex leaves fully masked rows at lse = -inf already; its output there is 0.
    return out, lse.float()


def flex_sparse_attention_output(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout | Any,
    *,
    scale: float | None = None,
    compiled: bool | None = None,
    kernel_options: dict[str, Any] | None = None,
) -> Tensor:
    """`flex_sparse_attention`'s output alone, the call a FlexAttention user who trains writes: without the
    lse output its compiled backward is Flex's plain one, which fits an H100 at head dim 128."""
    return _run(_flex_output, q, k, v, layout, scale, compiled, kernel_options)


def _run(
    fn: Any,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout | Any,
    scale: float | None,
    compiled: bool | None,
    kernel_options: dict[str, Any] | None,
) -> Any:
    """``fn`` (`_flex_output` or `_flex_with_constant_lse`) on the layout's block mask, compiled unless asked
    otherwise on CUDA, with kernel options that default to the layout's tiles when they are below 128."""
    block_mask = layout.to_flex() if isinstance(layout, BlockLayout) else layout
    bm, bn = block_mask.BLOCK_SIZE
    if kernel_options is None and q.is_cuda and min(bm, bn) < 128:
        # Compiled Flex tiles must divide the block mask's blocks, in the forward (BLOCK_M, BLOCK_N) and in
        # both backward loops (BLOCK_M1/N1 for dK/dV, BLOCK_M2/N2 for dQ); its defaults are 64 to 128 wide.
        kernel_options = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_M1": bm, "BLOCK_N1": bn, "BLOCK_M2": bm, "BLOCK_N2": bn}
    run = _compiled(fn) if (q.is_cuda if compiled is None else compiled) else fn
    with warnings.catch_warnings():
        # Eager Flex (the portable CPU path, chosen on purpose) warns that it is unfused.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return run(q, k, v, block_mask, scale, q.shape[1] != k.shape[1], kernel_options)


def _flex_output(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Any,
    scale: float | None,
    gqa: bool,
    kernel_options: Any,
) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=kernel_options)


def _flex_with_constant_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: Any,
    scale: float | None,
    gqa: bool,
    kernel_options: Any,
) -> tuple[Tensor, Tensor]:
    """FlexAttention's output and its lse detached inside the (compiled) graph: the lse is a constant for
    the gradient, as in every backend. Asked for the lse at all, even detached, the compiled backward
    (torch 2.11) is a variant whose kernel needed 238,080 bytes of shared memory at head dim 128 and GQA
    on an H100 (limit 232,448) and did not compile (tests/gpu/test_backward_gpu.py); the same layout
    without the lse output compiles (`flex_sparse_attention_output`)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    out, aux = flex_attention(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=gqa,
        return_aux=AuxRequest(lse=True),
        kernel_options=kernel_options,
    )
    if aux.lse is None:
        raise RuntimeError("flex_attention returned no lse although AuxRequest(lse=True) asked for it")
    return out, aux.lse.detach()


_COMPILED: dict[Any, Any] = {}


def _compiled(fn: Any) -> Any:
    """``torch.compile(fn, dynamic=False)``, once per process and function."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]
