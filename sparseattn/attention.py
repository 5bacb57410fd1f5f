"""`sparse_attention`: validation and explicit dispatch to one backend, never a silent fallback."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from sparseattn.kernels.attention.config import default_block_size
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.memo import LRU
from sparseattn.patterns import Pattern

Impl = Literal["triton", "flex", "reference"]
IMPLS: tuple[str, ...] = ("triton", "flex", "reference")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def validate_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError naming the argument when q, k, v do not form a valid attention problem."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected shape [batch, heads, seq_len, head_dim], got {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"k, v: expected the dtype of q ({q.dtype}), got k {k.dtype} and v {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"k, v: expected the device of q ({q.device}), got k on {k.device} and v on {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected batch {q.shape[0]} like q, got {k.shape[0]}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected head_dim {q.shape[-1]} like q, got {k.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"k: its {k.shape[1]} kv heads must divide the {q.shape[1]} query heads (GQA ratio an integer)"
        )
    if q.shape[2] == 0 or q.shape[2] > k.shape[2]:
        raise ValueError(f"q: expected 0 < q_len <= kv_len, got q_len={q.shape[2]}, kv_len={k.shape[2]}")
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[3] == 0:
        raise ValueError(f"q: expected batch, heads and head_dim >= 1, got shape {tuple(q.shape)}")
    check_finite(q, k, v)


def check_finite(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise ValueError naming the first of q, k, v that holds a NaN or an infinity.

    One ``aminmax`` per tensor (a single read that propagates NaN; an infinity is the min or the max),
    then one wait for the three results on the host: on CUDA this is the one host synchronisation of
    `sparse_attention`. On one CPU thread it costs ~20 ms for a [1, 32, 4096, 128] input, a small
    fraction of the attention over it. While a CUDA graph is being captured nothing can be read back,
    so the check is skipped there: a captured graph replays on inputs it never sees at capture time.
    """
    if q.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    with torch.no_grad():
        ends = torch.stack([torch.stack(torch.aminmax(t)).float() for t in (q, k, v)])
        finite = torch.isfinite(ends).all(dim=1).tolist()
    for name, ok in zip(("q", "k", "v"), finite, strict=True):
        if not ok:
            raise ValueError(
                f"{name}: expected finite values, found NaN or inf; sparse_attention refuses non-finite inputs "
                "on every backend (clean or clamp them first, e.g. torch.nan_to_num)"
            )


def validate_layout(layout: BlockLayout, q: Tensor, k: Tensor) -> None:
    """Raise ValueError when ``layout`` was built for other lengths, batch or heads than q and k."""
    if (layout.q_len, layout.kv_len) != (q.shape[2], k.shape[2]):
        raise ValueError(
            f"layout: built for q_len={layout.q_len}, kv_len={layout.kv_len}, "
            f"but q_len={q.shape[2]}, kv_len={k.shape[2]}"
        )
    if layout.batch_size not in (1, q.shape[0]):
        raise ValueError(f"layout: batch {layout.batch_size} does not broadcast to batch {q.shape[0]}")
    if layout.num_heads not in (1, q.shape[1]):
        raise ValueError(f"layout: {layout.num_heads} heads do not broadcast to {q.shape[1]} query heads")


_LOWERED: LRU[tuple[Pattern, int, int, tuple[int, int], torch.device], BlockLayout] = LRU(64)


def lowered(
    pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int], device: torch.device
) -> BlockLayout:
    """``lower(pattern, ...)``, memoised for patterns compared by value: a frozen pattern called again at
    the same lengths (every layer of a model, every step of a benchmark) reuses its layout. Patterns
    compared by identity (estimated ones, new at every call) are lowered afresh and not kept."""
    if type(pattern).__hash__ is object.__hash__:
        return lower(pattern, q_len, kv_len, block_size=block_size, device=device)
    key = (pattern, q_len, kv_len, block_size, device)
    return _LOWERED.get(key, lambda: lower(pattern, q_len, kv_len, block_size=block_size, device=device))


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern_or_layout: Pattern | BlockLayout,
    *,
    scale: float | None = None,
    impl: Impl = "triton",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of ``q`` over ``k, v`` restricted to a pattern (lowered here) or a ready `BlockLayout`.

    Shapes follow SDPA: q ``[B, Hq, q_len, D]``, k and v ``[B, Hkv, kv_len, D]`` with ``Hkv`` dividing
    ``Hq`` (GQA) and ``q_len <= kv_len``; queries are aligned to the end of the keys (chunked prefill).
    A pattern is lowered on q's device and the layout memoised (`lowered`). ``impl`` picks the backend explicitly: ``"triton"`` (the block-sparse kernel; CUDA), ``"flex"``
    (FlexAttention on the identical layout) or ``"reference"`` (dense, fp32, the oracle). Rows with
    nothing to attend give 0 and, with ``return_lse``, an lse of ``-inf``.
    Differentiable in q, k and v on every backend: ``"triton"`` through its backward kernels on the same
    layout, ``"reference"`` through autograd, ``"flex"`` through FlexAttention's own backward (CUDA only:
    Flex refuses a backward on the CPU). The layout, estimated or not, is a constant for the gradient.

    Inputs are checked the same way whatever ``impl``: a NaN or an infinity anywhere in q, k or v raises
    ValueError naming the tensor (`check_finite`: one read of each input and, on CUDA, one host
    synchronisation), and an empty batch, head or head dimension raises ValueError naming q. Under
    Triton's interpreter (``TRITON_INTERPRET=1``), whose bfloat16 ``tl.dot`` is wrong, ``impl="triton"``
    computes bfloat16 inputs in float32 and returns bfloat16.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    validate_qkv(q, k, v)
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite float, got {scale!r}")
    heads = q.shape[1]
    if isinstance(pattern_or_layout, Pattern):
        own = pattern_or_layout.num_heads
        if own is not None and own != heads:
            raise ValueError(f"pattern_or_layout: pattern written for {own} heads, but q has {heads}")
        if impl == "reference":
            mask = pattern_or_layout.to_dense(q.shape[2], k.shape[2], num_heads=own).unsqueeze(0)
            out, lse = _reference(q, k, v, mask, scale)
            return (out, lse) if return_lse else out
        block = default_block_size(
            impl,
            q.shape[-1],
            q.dtype,
            pattern_or_layout,
            q.shape[2],
            k.shape[2],
            group=heads // k.shape[1],
            device=q.device,
        )
        layout = lowered(pattern_or_layout, q.shape[2], k.shape[2], block, q.device)
    elif isinstance(pattern_or_layout, BlockLayout):
        layout = pattern_or_layout
        validate_layout(layout, q, k)
    else:
        raise ValueError(
            f"pattern_or_layout: expected a Pattern or a BlockLayout, got {type(pattern_or_layout).__name__}"
        )
    if layout.device != q.device:
        raise ValueError(f"pattern_or_layout: layout is on {layout.device} but q is on {q.device}; use layout.to()")

    if impl == "reference":
        out, lse = _reference(q, k, v, layout.to_dense(), scale)
    elif impl == "flex":
        from sparseattn.kernels.flex import flex_sparse_attention, flex_sparse_attention_output

        if not return_lse:
            return flex_sparse_attention_output(q, k, v, layout, scale=scale)
        out, lse = flex_sparse_attention(q, k, v, layout, scale=scale)
    else:
        from sparseattn.kernels.attention.autograd import triton_attention

        out, lse = triton_attention(q, k, v, layout, scale=scale)
    return (out, lse) if return_lse else out


def _reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None) -> tuple[Tensor, Tensor]:
    from sparseattn.kernels.reference import reference_attention

    return reference_attention(q, k, v, mask, scale=scale)
