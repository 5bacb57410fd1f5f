"""`CapturedEstimates`: a dynamic pattern's estimate and lowering replayed from a CUDA graph.

Issued operation by operation, `VerticalSlash(512, 2048)`'s estimate and lowering at 32K (14 query / 2 kv
heads, head dim 64) took 3.21 ms on an H100, of which the kernels' own device time was 0.74 ms: the host
spent the rest issuing 123 launches. Replayed from a CUDA graph the same work took 0.78 ms
(`experiments/results/profile_estimation.md`). The graph's inputs are fixed buffers, so each call copies
q and k into the buffers of its shape and replays.

What a replay reads must outlive the graph. Its own buffers live in the graph's memory pool as long as
this object holds them. Device tensors shared by shape (tile bounds, causal bitmaps: `memo.shared_cache`)
are collected while capturing (`memo.keeping`) and held here, since their caches may drop them.

A layout returned by `layout` is valid until the next call for the same shapes, whose replay overwrites
its tensors: use it at once, as a prefill does (the attention is queued behind the replay that made its
layout, and the next replay behind that attention, on one stream). A layout that autograd saves for the
backward would be overwritten before the backward reads it, so inputs that require grad are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.memo import LRU, keeping


@dataclass(frozen=True)
class _Capture:
    graph: Any  # torch.cuda.CUDAGraph
    q: Tensor
    k: Tensor
    layout: BlockLayout
    kept: tuple[Any, ...]


class CapturedEstimates:
    """Estimate and lowering of dynamic patterns, each (pattern, shapes) captured once in a CUDA graph and
    replayed on later calls; at most ``maxsize`` graphs, each holding a copy of one q and one k.

    ``layout(pattern, q, k, num_heads=..., prompt_len=...)`` equals
    ``lower(pattern.estimate(q, k), q_len, kv_len, num_heads=..., device=q.device, prompt_len=...)``.
    """

    def __init__(self, maxsize: int = 4) -> None:
        self._captures: LRU[tuple[object, ...], _Capture] = LRU(maxsize)

    @property
    def captures(self) -> int:
        """Graphs captured so far (tests and logs read it)."""
        return self._captures.misses

    def layout(
        self, pattern: Any, q: Tensor, k: Tensor, *, num_heads: int | None = None, prompt_len: int | None = None
    ) -> BlockLayout:
        """The layout of ``pattern`` estimated from ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``,
        valid until the next call with the same shapes (module docstring)."""
        if not callable(getattr(pattern, "estimate", None)):
            raise ValueError(f"pattern: expected a dynamic pattern (with estimate(q, k)), got {type(pattern).__name__}")
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, Tensor) or t.device.type != "cuda":
                raise ValueError(f"{name}: CUDA graphs replay on CUDA; expected a CUDA tensor, got {_where(t)}")
            if torch.is_grad_enabled() and t.requires_grad:
                raise ValueError(
                    f"{name}: requires grad, and autograd would keep a layout that the next replay overwrites; "
                    "estimate without capture for training"
                )
        if k.device != q.device:
            raise ValueError(f"k: expected the device of q ({q.device}), got {k.device}")
        # Buffers made under inference mode refuse writes outside it: one capture per mode.
        mode = torch.is_inference_mode_enabled()
        key = (
            repr(pattern),
            tuple(q.shape),
            q.dtype,
            tuple(k.shape),
            k.dtype,
            str(q.device),
            num_heads,
            prompt_len,
            mode,
        )
        capture = self._captures.get(key, lambda: _capture(pattern, q, k, num_heads, prompt_len))
        capture.q.copy_(q)
        capture.k.copy_(k)
        capture.graph.replay()
        # A new owner each call: state attached to a layout (work lists, row statistics) was derived from
        # an earlier replay's contents.
        return replace(capture.layout)


def _capture(pattern: Any, q: Tensor, k: Tensor, num_heads: int | None, prompt_len: int | None) -> _Capture:
    q_len, kv_len = q.shape[2], k.shape[2]

    def step(q_in: Tensor, k_in: Tensor) -> BlockLayout:
        estimate = pattern.estimate(q_in, k_in)
        return lower(estimate, q_len, kv_len, num_heads=num_heads, device=q_in.device, prompt_len=prompt_len)

    with keeping() as kept, torch.cuda.device(q.device):
        static_q, static_k = q.clone(), k.clone()
        # Compile the kernels and fill the shared caches outside the capture, on a side stream as capture
        # requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(static_q, static_k)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                layout = step(static_q, static_k)
        except RuntimeError as error:
            raise RuntimeError(
                f"{pattern!r}: its estimate and lowering could not be captured in a CUDA graph "
                f"(an operation waits for the host or copies from it): {error}"
            ) from error
    return _Capture(graph, static_q, static_k, layout, tuple(kept))


def _where(t: object) -> str:
    return f"a tensor on {t.device}" if isinstance(t, Tensor) else type(t).__name__
