"""Eager attention that exposes each layer's probabilities, for analyses that need them (not for speed).

`ProbeAttention` is registered in transformers' ``AttentionInterface`` like any backend and computes
plain causal softmax attention, row-chunked; at every layer it hands the probabilities to a callback
(``observe(layer, probs, q_start)``), which may return a replacement (the layer-selection gate does).
Only unpadded prefills from an empty cache are supported (causality is applied here, transformers'
mask is ignored): the analyses are about one prompt's attention.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

_names = itertools.count()
Observer = Callable[[int, Tensor, int], Tensor | None]


class ProbeAttention:
    def __init__(self, observe: Observer, rows_per_chunk: int | None = None) -> None:
        self.observe = observe
        self.rows_per_chunk = rows_per_chunk
        self.name = f"sparseattn_probe_{next(_names)}"

    def __call__(
        self,
        module: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if query.shape[2] != key.shape[2]:
            raise ValueError(
                f"query: the probe handles prefills from an empty cache only, got q_len {query.shape[2]} < kv_len {key.shape[2]}"
            )
        groups = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1)
        v = value.repeat_interleave(groups, dim=1)
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        size = query.shape[2]
        step = self.rows_per_chunk or size
        layer = module.layer_idx

        def rows_out(q: Tensor, start: int) -> Tensor:
            # Products in the model dtype (bf16 uses the CPU matrix units), softmax and probabilities in fp32.
            scores = (q @ k.transpose(-1, -2)).float() * scale
            rows = torch.arange(start, start + q.shape[2], device=q.device).view(-1, 1)
            scores = scores.masked_fill(torch.arange(size, device=q.device).view(1, -1) > rows, -math.inf)
            probs = torch.softmax(scores, dim=-1)
            replaced = self.observe(layer, probs, start)
            probs = probs if replaced is None else replaced
            return probs.to(v.dtype) @ v

        outs = []
        for start in range(0, size, step):
            q = query[:, :, start : start + step]
            if torch.is_grad_enabled() and self.rows_per_chunk:
                # Under autograd each chunk keeps only its inputs and is recomputed in the backward:
                # otherwise every chunk's fp32 probabilities stay alive at once (O(N^2) for the layer).
                outs.append(checkpoint(rows_out, q, start, use_reentrant=False))
            else:
                outs.append(rows_out(q, start))
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


class NamedAttention(Protocol):
    """An attention function for transformers' ``AttentionInterface``, with the name it registers under."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def use_probe(model: Any, probe: NamedAttention) -> None:
    """Register ``probe`` (with transformers' SDPA mask builder) under its name and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(probe.name, probe)
    AttentionMaskInterface.register(probe.name, sdpa_mask)
    model.set_attn_implementation(probe.name)
