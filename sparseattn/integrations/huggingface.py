"""Hugging Face transformers: prefill through a `LayerSchedule`, as a registered attention implementation.

`use_schedule(model, schedule)` registers a `ScheduledAttention` under a name of its own in
``transformers.AttentionInterface`` (with transformers' SDPA mask builder in ``AttentionMaskInterface``)
and switches the model to it; no forward is patched. Every attention call then takes one of these
paths, counted in ``ScheduledAttention.calls``:

- ``"sparse_prefill"``: a prompt from an empty cache (``q_len == kv_len``) in a layer whose pattern is
  not plain causal: the schedule's layout through `sparse_attention`.
- ``"dense_prefill"``: the same in a plain `Causal()` layer, served by PyTorch SDPA (``causal_backend="sdpa"``,
  the default; ``sdpa_backend`` pins its backend, e.g. cuDNN, for unpadded prompts) — a dense kernel is the
  fastest way to compute dense attention. With ``causal_backend="sparse"`` such layers take the sparse
  path too (to check our kernel on dense work).
- ``"sparse_chunk"``: a chunked-prefill continuation (``1 < q_len < kv_len``, no padding) in a layer whose
  pattern is not plain causal: the schedule's pattern for the chunk's rows over every cached key, queries
  aligned bottom-right (``q_pos = q_idx + kv_len - q_len``), so `Sink`, `Window` and every other
  position-relative pattern attend exactly as in one whole-prompt prefill. `LastQueries` (TriangleMix's
  last rows) counts from the prompt's end: inside ``with attention.prompt_length(total):`` a chunk's rows
  are last rows only within the prompt's last ``n`` positions, and chunks agree with the whole prompt;
  without it, each chunk is taken to end the prompt, so a chunk the prompt continues past gives its own
  final ``n`` rows every key (more than the whole prompt would). Dynamic patterns estimate per chunk,
  from the chunk's own last queries against every cached key (no agreement with a whole-prompt estimate
  is claimed).
- ``"dense_decode"``: decode steps (``q_len == 1``) attend densely to everything cached, through
  transformers' own SDPA function, exactly as the unmodified model would.
- ``"dense_cache"``: other continuations, dense over the cache through the same function: plain `Causal()`
  layers (dense is exact; ``causal_backend="sparse"`` sends them to ``"sparse_chunk"``) and calls whose
  mask is not the plain causal one (padded batches, static caches).

Padded batches take the sparse path one sequence at a time over their real tokens (left or right
padding); a mask that is not padding (packed sequences, custom masks) is refused with a ValueError.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

import torch
from torch import Tensor

from sparseattn.attention import IMPLS, default_block_size, sparse_attention
from sparseattn.integrations.padding import is_plain_continuation, sequence_spans
from sparseattn.integrations.timing import LayerTimer
from sparseattn.schedule import LayerSchedule

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
CAUSAL_BACKENDS = ("sdpa", "sparse")
SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math")
_names = itertools.count()


class ScheduledAttention:
    """The attention function transformers calls in every layer; routes each call and counts the routes."""

    def __init__(
        self,
        schedule: LayerSchedule,
        *,
        impl: str = "triton",
        causal_backend: str = "sdpa",
        sdpa_backend: str | None = None,
        timer: LayerTimer | None = None,
    ) -> None:
        if not schedule.bound:
            raise ValueError("schedule: bind it to the model first (use_schedule does)")
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
        if causal_backend not in CAUSAL_BACKENDS:
            raise ValueError(f"causal_backend: expected one of {CAUSAL_BACKENDS}, got {causal_backend!r}")
        if sdpa_backend is not None and sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend: expected None or one of {SDPA_BACKENDS}, got {sdpa_backend!r}")
        self.schedule = schedule
        self.impl = impl
        self.causal_backend = causal_backend
        self.sdpa_backend = sdpa_backend
        self.timer = timer
        self.calls: Counter[str] = Counter()
        self.name: str | None = None
        self.prompt_len: int | None = None

    @contextmanager
    def prompt_length(self, total: int) -> Iterator[None]:
        """Within the block, prefill calls are chunks of one prompt of ``total`` tokens (per sequence, no
        padding): `LastQueries` counts from its end (`MaskContext.prompt_len`), so every chunk attends
        as its rows do in a whole-prompt prefill. A call whose cache outgrows ``total`` is refused."""
        if not (isinstance(total, int) and total > 0):
            raise ValueError(f"total: expected a positive int (the prompt's length in tokens), got {total!r}")
        previous, self.prompt_len = self.prompt_len, total
        try:
            yield
        finally:
            self.prompt_len = previous

    def __call__(
        self,
        module: torch.nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if dropout and module.training:
            raise ValueError("dropout: sparse prefill is for inference; set model.eval() or attention_dropout=0")
        if torch.is_autocast_enabled(query.device.type):
            # Under autocast q and k leave RoPE in fp32 (cos/sin carry the embeddings' dtype) while v leaves its
            # projection in the autocast dtype; SDPA casts all three to that dtype, and so does this.
            dtype = torch.get_autocast_dtype(query.device.type)
            query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        layer = int(cast(int, module.layer_idx))
        q_len, kv_len = query.shape[2], key.shape[2]
        dense_layer = self.causal_backend == "sdpa" and self.schedule.is_causal(layer)
        if q_len == 1 and kv_len > 1:
            path = "dense_decode"
        elif q_len < kv_len:
            chunk = not dense_layer and is_plain_continuation(attention_mask, q_len, kv_len)
            path = "sparse_chunk" if chunk else "dense_cache"
        elif dense_layer:
            path = "dense_prefill"
        else:
            path = "sparse_prefill"
        if self.prompt_len is not None and path in ("sparse_chunk", "sparse_prefill") and kv_len > self.prompt_len:
            raise ValueError(
                f"prompt_length: {self.prompt_len} tokens, but this prefill call already holds {kv_len} keys"
            )
        self.calls[path] += 1
        token = self.timer.start(query.device) if self.timer else None
        if path in ("dense_decode", "dense_cache"):
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            # Left to PyTorch's own backend choice: sdpa_backend names the prefill baseline, and a backend
            # forced for 32K-token prompts need not take one-token queries or padding masks.
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        elif path == "dense_prefill":
            out = self._dense_prefill(query, key, value, attention_mask, scaling).transpose(1, 2).contiguous()
        elif path == "sparse_chunk":
            out = self._sparse_chunk(layer, query, key, value, scaling).transpose(1, 2).contiguous()
        else:
            out = self._sparse_prefill(layer, query, key, value, attention_mask, scaling).transpose(1, 2).contiguous()
        if self.timer is not None:
            self.timer.stop(token, query.device, layer, path)
        return out, None

    # ----------------------------------------------------------------- paths
    def _sparse_prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None
    ) -> Tensor:
        spans = None if mask is None else sequence_spans(mask)
        size = q.shape[2]
        if spans is not None and all(span == (0, size) for span in spans):
            spans = None
        if spans is not None and self.prompt_len is not None:
            raise ValueError("prompt_length: a padded batch has one prompt length per sequence; prefill it unpadded")
        if spans is None and not (self.schedule.is_dynamic(layer) and q.shape[0] > 1):
            return self.attend(layer, q, k, v, scale)
        # One sequence at a time: dynamic patterns are estimated per sequence, padding is cut off.
        spans = spans or [(0, size)] * q.shape[0]
        out = torch.zeros_like(q)
        for b, (start, stop) in enumerate(spans):
            row = (slice(b, b + 1), slice(None), slice(start, stop))
            out[row] = self.attend(layer, q[row], k[row], v[row], scale)
        return out

    def _sparse_chunk(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
        if not (self.schedule.is_dynamic(layer) and q.shape[0] > 1):
            return self.attend(layer, q, k, v, scale)
        # Dynamic patterns are estimated per sequence.
        return torch.cat(
            [self.attend(layer, q[b : b + 1], k[b : b + 1], v[b : b + 1], scale) for b in range(q.shape[0])]
        )

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
        """Sparse prefill of one batch of equal-length sequences for ``layer`` (a whole prompt, or a chunk of
        ``q_len < kv_len`` queries over the cache, with `prompt_len` for `LastQueries`): the hook a subclass
        overrides to send prefill elsewhere (``sparseattn.eval.masked_backend`` hands SDPA the exact mask)."""
        block = functools.partial(
            default_block_size, self.impl, q.shape[-1], q.dtype, group=q.shape[1] // k.shape[1], device=q.device
        )
        # Triton launches on the current device; a model spread over GPUs has layers on the others.
        with torch.cuda.device(q.device) if q.is_cuda else nullcontext():
            layout = self.schedule.layout(layer, q, k, block, prompt_len=self.prompt_len)
            return cast(Tensor, sparse_attention(q, k, v, layout, scale=scale, impl=self.impl))  # type: ignore[arg-type]

    def _dense_prefill(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
        # K/V are repeated rather than passed with enable_gqa: cuDNN, the fastest dense backend on Hopper,
        # is the baseline we report, and repeating costs one copy of K and V against a quadratic kernel.
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if mask is not None:  # padded batch: whichever backend takes a mask
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        with self._sdpa_context():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def _sdpa_context(self) -> AbstractContextManager[None]:
        if self.sdpa_backend is None:
            return nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }[self.sdpa_backend]
        return sdpa_kernel(backend)

    def __repr__(self) -> str:
        return (
            f"ScheduledAttention(impl={self.impl!r}, causal_backend={self.causal_backend!r}, "
            f"sdpa_backend={self.sdpa_backend!r}, calls={dict(self.calls)})"
        )


def check_model(model: torch.nn.Module) -> tuple[int, int]:
    """(layers, query heads) of a supported causal LM; ValueError naming what is unsupported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model: expected a Llama, Qwen2 or Mistral causal LM (model_type in {SUPPORTED_MODEL_TYPES}), "
            f"got {type(model).__name__} with model_type {model_type!r}"
        )
    sliding = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ()
    if sliding is not None or any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"model: its config asks for sliding-window attention (sliding_window={sliding}); a schedule replaces "
            "the whole attention pattern, so set config.sliding_window = None or put a Window into the schedule"
        )
    assert config is not None  # model_type was read from it
    return config.num_hidden_layers, config.num_attention_heads


def use_schedule(
    model: torch.nn.Module,
    schedule: LayerSchedule,
    *,
    impl: str = "triton",
    causal_backend: str = "sdpa",
    sdpa_backend: str | None = None,
    timer: LayerTimer | None = None,
) -> ScheduledAttention:
    """Make ``model`` prefill with ``schedule`` (in place); returns the attention function with its counters.

    The schedule is bound (validated) against the model's layers and query heads first. Calling this
    again on the same model replaces the previous schedule; `use_dense` switches back to plain SDPA.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    num_layers, num_heads = check_model(model)
    attention = ScheduledAttention(
        schedule.bind(num_layers, num_heads),
        impl=impl,
        causal_backend=causal_backend,
        sdpa_backend=sdpa_backend,
        timer=timer,
    )
    attention.name = f"sparseattn_{next(_names)}"
    AttentionInterface.register(attention.name, attention)
    # Without a mask function of its own, transformers would build no mask at all and padding would be lost.
    AttentionMaskInterface.register(attention.name, sdpa_mask)
    cast(Any, model).set_attn_implementation(attention.name)
    return attention


def use_dense(model: torch.nn.Module) -> None:
    """Back to transformers' own SDPA attention."""
    cast(Any, model).set_attn_implementation("sdpa")
