"""The Triton path as an autograd function: the forward kernel, then the backward kernels on the same layout.

The layout (and with it any estimate it came from) is a constant for the gradient: only q, k and v
receive gradients, and the lse, returned for merging and inspection, is not differentiable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sparseattn.kernels.attention.backward import triton_sparse_attention_backward
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.layout import BlockLayout


class TritonSparseAttention(torch.autograd.Function):
    """``(out, lse) = TritonSparseAttention.apply(q, k, v, layout, scale)``; saves q, k, v, out and lse."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, layout: BlockLayout, scale: float | None) -> Any:
        out, lse = triton_sparse_attention(q, k, v, layout, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: Tensor, _dlse: Tensor) -> Any:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = triton_sparse_attention_backward(dout, q, k, v, out, lse, ctx.layout, scale=ctx.scale)
        return dq, dk, dv, None, None


def triton_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: BlockLayout, *, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """`triton_sparse_attention`, differentiable in q, k and v when autograd needs it; without a graph
    to record (inference, ``torch.no_grad``) the forward kernel runs alone and saves nothing."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out, lse = TritonSparseAttention.apply(q, k, v, layout, scale)
        return out, lse
    return triton_sparse_attention(q, k, v, layout, scale=scale)
