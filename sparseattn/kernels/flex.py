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
    attend give 0 and ``-inf``.
    """
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    block_mask = layout.to_flex() if isinstance(layout, BlockLayout) else layout
    bm, bn = block_mask.BLOCK_SIZE
    if kernel_options is None and q.is_cuda and min(bm, bn) < 128:
        # Compiled Flex tiles must divide the block mask's blocks, in the forward (BLOCK_M, BLOCK_N) and in
        # both backward loops (BLOCK_M1/N1 for dK/dV, BLOCK_M2/N2 for dQ); its defaults are 64 to 128 wide.
        kernel_options = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_M1": bm, "BLOCK_N1": bn, "BLOCK_M2": bm, "BLOCK_N2": bn}
    compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if compiled else flex_attention
    gqa = q.shape[1] != k.shape[1]
    with warnings.catch_warnings():
        # Eager Flex (the portable CPU path, chosen on purpose) warns that it is unfused.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = fn(
            q,
            k,
            v,
            block_mask=block_mask,
            scale=scale,
            enable_gqa=gqa,
            return_aux=AuxRequest(lse=True),
            kernel_options=kernel_options,
        )
    # Flex leaves fully masked rows at lse = -inf already; its output there is 0.
    return out, aux.lse.float()


_COMPILED: Any = None


def _compiled_flex() -> Any:
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED
