"""A fast CPU prefill backend for accuracy work: the schedule's token-exact mask handed to PyTorch SDPA.

`use_schedule(..., impl="reference")` is the oracle but materialises fp32 scores per chunk and takes
~90 s for one 4K SmolLM2 prefill on two CPU cores; SDPA with a boolean mask computes the identical mask
in ~0.1 s per layer. Accuracy does not depend on how the kept pairs are computed, only on which pairs
are kept, and ``tests/test_eval_masked_backend.py`` checks this backend against the reference path.

Routing (dense SDPA for causal layers, dense attention to the cache for decode steps and chunk
continuations, one sequence at a time for padded batches) is inherited from `ScheduledAttention`;
only the per-sequence attention of a sparse layer is replaced.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from sparseattn.integrations.huggingface import ScheduledAttention, check_model
from sparseattn.patterns import Pattern
from sparseattn.schedule import LayerSchedule, is_dynamic

_names = itertools.count()


class MaskedSDPAAttention(ScheduledAttention):
    """`ScheduledAttention` whose sparse layers run SDPA under the pattern's dense boolean mask."""

    def __init__(self, schedule: LayerSchedule) -> None:
        super().__init__(schedule, impl="reference", causal_backend="sdpa")
        self._masks: dict[tuple, Tensor] = {}

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
        mask = self.mask(layer, q, k)
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def mask(self, layer: int, q: Tensor, k: Tensor) -> Tensor:
        """Bool ``[1, 1|H, q_len, kv_len]`` of ``layer`` for these queries and keys (static masks cached).

        Four dimensions on purpose: PyTorch's CPU SDPA takes its fused path only for 2-D or 4-D masks and
        falls back to a much slower one for a 3-D mask.
        """
        pattern = self.schedule.pattern(layer)
        heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
        if is_dynamic(pattern):
            dense = pattern.estimate(q, k).to_dense(q_len, kv_len, num_heads=heads)
            return self._checked(dense, layer).unsqueeze(0).to(q.device)
        assert isinstance(pattern, Pattern)  # every non-dynamic schedule entry is a Pattern
        key = (pattern, q_len, kv_len, heads, str(q.device))
        if key not in self._masks:
            # Patterns written per head give [H, q, kv]; shared ones [1, q, kv], which broadcasts over heads.
            dense = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads)
            if any(k[1:] != key[1:] for k in self._masks):
                self._masks.clear()  # one length at a time keeps memory bounded over a run of many lengths
            self._masks[key] = self._checked(dense, layer).unsqueeze(0).to(q.device)
        return self._masks[key]

    @staticmethod
    def _checked(mask: Tensor, layer: int) -> Tensor:
        # SDPA turns a row with no kept key into NaN; the kernels return 0 there. Refuse rather than differ.
        if not bool(mask.any(dim=-1).all()):
            raise ValueError(f"schedule: layer {layer} has query rows that attend to no key; SDPA would give NaN")
        return mask


def use_masked_schedule(model: Any, schedule: LayerSchedule) -> MaskedSDPAAttention:
    """Make ``model`` prefill with ``schedule`` through masked SDPA (in place); returns the attention function."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    num_layers, num_heads = check_model(model)
    attention = MaskedSDPAAttention(schedule.bind(num_layers, num_heads))
    attention.name = f"sparseattn_masked_{next(_names)}"
    AttentionInterface.register(attention.name, attention)
    AttentionMaskInterface.register(attention.name, sdpa_mask)
    model.set_attn_implementation(attention.name)
    return attention


class AttentionSwitch:
    """Switches one model between dense SDPA and several schedules, registering each schedule once.

    Registering anew on every switch would leave one attention function (and its cached masks) per
    switch in transformers' global registry.
    """

    def __init__(self, backend: str = "masked_sdpa", impl: str = "reference") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.impl = impl
        self._names: dict[int, tuple[LayerSchedule, str]] = {}

    def __call__(self, model: Any, schedule: LayerSchedule | None) -> None:
        from sparseattn.integrations import use_dense, use_schedule

        if schedule is None:
            use_dense(model)
        elif id(schedule) in self._names:
            model.set_attn_implementation(self._names[id(schedule)][1])
        else:
            if self.backend == "masked_sdpa":
                name = use_masked_schedule(model, schedule).name
            else:
                name = use_schedule(model, schedule, impl=self.impl).name
            assert name is not None  # both functions register the attention under a name
            self._names[id(schedule)] = (schedule, name)  # the schedule is kept so its id stays unique


BACKENDS = ("masked_sdpa", "framework")
