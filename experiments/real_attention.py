"""One layer of a real model, taken apart: its post-RoPE q/k/v from a dense prefill, and what a pattern
or a dynamic rule keeps of its attention and costs in time (the long-context app's structure and dynamic
parts)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


@torch.no_grad()
def capture_qkv(model: Any, prompt_ids: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Post-RoPE ``(q, k, v)`` of every layer from one dense prefill (the model's own SDPA attention)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def capture(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        captured[int(module.layer_idx)] = (query.detach(), key.detach(), value.detach())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    previous = model.config._attn_implementation
    AttentionInterface.register("sparseattn_capture", capture)
    AttentionMaskInterface.register("sparseattn_capture", sdpa_mask)
    model.set_attn_implementation("sparseattn_capture")
    try:
        device = next(model.parameters()).device
        model(torch.tensor([list(prompt_ids)], device=device), use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    return [captured[i] for i in range(len(captured))]


def block_of(impl: str, q: torch.Tensor, k: torch.Tensor) -> Any:
    import functools

    from sparseattn.attention import default_block_size

    return functools.partial(
        default_block_size, impl, q.shape[-1], q.dtype, group=q.shape[1] // k.shape[1], device=q.device
    )


def scheduled_attention(impl: str, schedule: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What a sparse layer costs in a prefill: its layout (lowered or estimated anew) and the kernel."""
    from sparseattn.attention import sparse_attention

    schedule.clear_cache()
    layout = schedule.layout(0, q, k, block_of(impl, q, k))
    return sparse_attention(q, k, v, layout, impl=impl)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline as the integration runs it: SDPA on repeated K/V, cuDNN on CUDA."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION) if q.is_cuda else nullcontext():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed(fn: Any, repeats: int) -> float:
    """Median milliseconds of ``fn`` after one untimed call (compilation, cuDNN plans)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def mass_kept_rows(q: torch.Tensor, k: torch.Tensor, patterns: dict, rows: int) -> dict[str, float]:
    """Mean over heads and ``rows`` evenly spaced query rows of the dense softmax mass each pattern keeps.

    Evenly spaced rows estimate the all-rows mean that sparseattn.eval.attention_profile computes, at a
    cost that stays small at 128K (all rows would be 14 x 128K x 128K probabilities per layer).
    """
    from sparseattn.patterns import MaskContext

    heads, size = q.shape[1], q.shape[2]
    picked = torch.linspace(0, size - 1, min(rows, size), device=q.device).round().long().unique()
    groups = heads // k.shape[1]
    kk = k[0].repeat_interleave(groups, dim=0).float()  # [H, N, D]
    scores = torch.einsum("hqd,hkd->hqk", q[0, :, picked].float(), kk) * q.shape[-1] ** -0.5
    keys = torch.arange(size, device=q.device)
    scores.masked_fill_(keys.view(1, 1, -1) > picked.view(1, -1, 1), float("-inf"))
    probs = scores.softmax(dim=-1)
    ctx = MaskContext(size, size, heads)
    h = torch.arange(heads, device=q.device).view(-1, 1, 1)
    out = {}
    for name, pattern in patterns.items():
        mask = pattern.mask(h, picked.view(1, -1, 1), keys.view(1, 1, -1), ctx)
        out[name] = float((probs * mask).sum(dim=-1).mean())
    return out


def output_error(out: torch.Tensor, dense: torch.Tensor, last: int) -> tuple[float, float]:
    """Relative L2 error of ``out`` against ``dense`` ([1, H, N, D]) over all rows and over the ``last``
    rows, where the answer's first token is read."""
    diff, ref = (out.float() - dense.float()), dense.float()
    whole = float(diff.norm() / ref.norm())
    tail = float(diff[:, :, -last:].norm() / ref[:, :, -last:].norm())
    return whole, tail


def rule_on_layer(
    impl: str,
    rule: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dense: torch.Tensor,
    rows: int,
    repeats: int,
    *,
    capture: bool = False,
) -> dict[str, float]:
    """One dynamic rule alone on one layer: the estimated layout's density, the dense attention mass it
    keeps on ``rows`` sampled query rows, its output error against ``dense``, and median times of estimate +
    lower, of the attention on that layout, and of the two together (what a prefill pays per layer).
    ``capture`` replays the estimate + lower from a CUDA graph (`LayerSchedule(capture_estimates=True)`)."""
    from sparseattn.attention import sparse_attention
    from sparseattn.schedule import LayerSchedule

    schedule = LayerSchedule(default=rule, capture_estimates=capture).bind(1, q.shape[1])
    layout = schedule.layout(0, q, k, block_of(impl, q, k))
    out = sparse_attention(q, k, v, layout, impl=impl)
    error, error_last = output_error(out, dense, min(64, q.shape[2]))
    estimate = rule.estimate(q, k)
    return {
        "density": layout.density(),
        "kept": mass_kept_rows(q, k, {"rule": estimate}, rows)["rule"],
        "error": error,
        "error_last": error_last,
        "ms_estimate": timed(lambda: schedule.layout(0, q, k, block_of(impl, q, k)), repeats),
        "ms_attention": timed(lambda: sparse_attention(q, k, v, layout, impl=impl), repeats),
        "ms_total": timed(lambda: scheduled_attention(impl, schedule, q, k, v), repeats),
    }
