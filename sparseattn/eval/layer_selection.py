"""TriangleMix's layer selection: which layers can drop the middle of their attention.

The paper ranks layers by the gradient of the first generated token's loss with respect to the
*middle* of each layer's attention — the causal part the triangle drops (not sink, not window, not the
last query rows) — averaged over samples; layers with small gradients there become triangle layers.
The authors did not publish this code; this is our implementation.

Per layer and head, for each sample, with ``G = dL/dA`` on the middle region ``M``:

- ``grad_abs``: mean of ``|G|`` over ``M`` — the ranking statistic.
- ``attribution``: ``sum(A * G)`` over ``M`` = dL/dg for attention ``A * (1 + g * M)`` at ``g = 0``:
  the first-order change of the loss if the middle were scaled (dropping it is ``g = -1``).

Both come from one ordinary backward pass per sample: with ``O = A V``, ``G = dO V^T``, so the fused
attention's output gradient is all that is kept, and the ``[heads, N, N]`` quantities are formed in row
chunks afterwards, without autograd (`middle_gradients`). `layer_selection_reference` computes the
same figures literally, through gated eager probabilities, as the tests' oracle.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparseattn.eval.eager_attention import use_probe
from sparseattn.patterns import Causal, MaskContext, Triangle

METHODS = ("gradient", "deepest", "shallowest", "random")
PAPER_TRIANGLE = Triangle()  # sink 8, window 512, last 128
_names = itertools.count()


@dataclass(frozen=True)
class LayerScores:
    grad_abs: Tensor  # [samples, layers, heads]
    attribution: Tensor  # [samples, layers, heads]

    @property
    def per_layer(self) -> Tensor:
        """The ranking statistic: grad_abs averaged over samples and heads, ``[layers]``."""
        return self.grad_abs.mean(dim=(0, 2))


class _OutputGradients:
    """Attention through transformers' SDPA that keeps, per layer, q, k, v and the scale from the forward
    and the gradient of the attention output from the backward: everything the statistics need."""

    def __init__(self) -> None:
        self.name = f"sparseattn_output_gradients_{next(_names)}"
        self.inputs: dict[int, tuple[Tensor, Tensor, Tensor, float]] = {}
        self.grads: dict[int, Tensor] = {}

    def __call__(
        self,
        module: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Any]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        if out.requires_grad:
            # Under gradient checkpointing the layer runs again in the backward with equal tensors;
            # storing (never accumulating) makes the second call harmless.
            layer = int(module.layer_idx)
            scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
            self.inputs[layer] = (query.detach(), key.detach(), value.detach(), scale)
            out.register_hook(functools.partial(self._keep, layer))
        return out, weights

    def _keep(self, layer: int, grad: Tensor) -> None:
        self.grads[layer] = grad.detach().transpose(1, 2)  # [B, N, H, D] -> [B, H, N, D]


def require_middle(entries: int, size: int, triangle: Triangle) -> int:
    """``entries``, the middle region's size, when there is one: the mean gradient over nothing is undefined."""
    if entries == 0:
        raise ValueError(
            f"prompts: a {size}-token prompt leaves {triangle!r} no middle region to score "
            f"(the triangle keeps every pair); use prompts longer than sink + window + last tokens"
        )
    return entries


def middle_region(pattern: Any, size: int, start: int, stop: int, device: torch.device) -> Tensor:
    """bool ``[1, stop - start, size]``: ``pattern`` on query rows ``start:stop`` of a ``size``-token prompt."""
    ctx = MaskContext(size, size, device=device)
    rows = torch.arange(start, stop, device=device).view(1, -1, 1)
    cols = torch.arange(size, device=device).view(1, 1, -1)
    return pattern.mask(torch.zeros(1, 1, 1, dtype=torch.long, device=device), rows, cols, ctx)


def _middle_chunks(middle_pattern: Any, size: int, rows_per_chunk: int | None, device: torch.device) -> list:
    """``(start, stop, region)`` per row chunk, ``region`` bool ``[1, 1, stop - start, size]``: built once per
    prompt and shared by every layer."""
    step = rows_per_chunk or size
    return [
        (
            start,
            min(size, start + step),
            middle_region(middle_pattern, size, start, min(size, start + step), device)[None],
        )
        for start in range(0, size, step)
    ]


def _layer_statistics(
    chunks: list, q: Tensor, k: Tensor, v: Tensor, d_out: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Sums over the middle region of ``|G|`` and ``A * G`` per head for one layer of one sample
    (q, d_out ``[1, H, N, D]``; k, v ``[1, H_kv, N, D]``)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).float()
    v = v.repeat_interleave(groups, dim=1).float()
    cols = torch.arange(q.shape[2], device=q.device)
    grad_abs = torch.zeros(q.shape[1], dtype=torch.float64, device=q.device)
    attribution = torch.zeros_like(grad_abs)
    for start, stop, region in chunks:
        middle = region.float()  # [1, 1, r, N]
        scores = (q[:, :, start:stop].float() @ k.transpose(-1, -2)) * scale  # [1, H, r, N]
        future = cols.view(1, -1) > torch.arange(start, stop, device=q.device).view(-1, 1)
        probs = torch.softmax(scores.masked_fill(future, -math.inf), dim=-1)
        grad = d_out[:, :, start:stop].float() @ v.transpose(-1, -2)  # dL/dA, [1, H, r, N]
        grad_abs += (grad.abs() * middle).sum(dim=(0, 2, 3)).double()
        attribution += (probs * grad * middle).sum(dim=(0, 2, 3)).double()
    return grad_abs, attribution


def check_targets(prompts: Sequence[Sequence[int]], targets: Sequence[int]) -> None:
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(
            f"targets: expected one target per prompt (and at least one), got {len(targets)} for {len(prompts)}"
        )


@contextmanager
def gradient_pass(model: Any, checkpointing: bool) -> Iterator[None]:
    """``model`` set up for backward passes to its inputs, then put back: parameters frozen (their
    gradients would double the memory and nothing reads them), gradient checkpointing on request, the
    attention implementation restored."""
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    previous = model.config._attn_implementation
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode; these models have no dropout at rest
    try:
        yield
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
        model.set_attn_implementation(previous)
        for p, flag in zip(model.parameters(), saved, strict=True):
            p.requires_grad_(flag)


def middle_gradients(
    model: Any,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    triangle: Triangle = PAPER_TRIANGLE,
    checkpointing: bool = True,
    rows_per_chunk: int | None = None,
) -> LayerScores:
    """Per-sample, per-layer, per-head middle-region gradients of ``-log p(target | prompt)``.

    With ``O = A V``, ``dL/dA = dO V^T``: one ordinary backward pass (fused SDPA, no probabilities kept)
    gives every layer's ``dO``, and the statistics are then read off in row chunks of ``rows_per_chunk``
    queries without autograd. `layer_selection_reference.middle_gradients_reference` computes the same
    figures literally (gated eager probabilities) and is the oracle in the tests.
    """
    check_targets(prompts, targets)
    middle_pattern = Causal() & ~triangle
    grad_abs, attribution = [], []
    with gradient_pass(model, checkpointing):
        for prompt, target in tqdm(list(zip(prompts, targets, strict=True)), desc="layer gradients", unit="sample"):
            capture = _OutputGradients()
            use_probe(model, capture)
            device = next(model.parameters()).device
            ids = torch.tensor([list(prompt)], device=device)
            # The graph starts at the embeddings, the parameters being frozen.
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, logits_to_keep=1).logits[0, -1].float()
            (-torch.log_softmax(logits, dim=-1)[target]).backward()
            chunks = _middle_chunks(middle_pattern, len(prompt), rows_per_chunk, device)
            entries = require_middle(sum(int(region.sum()) for _, _, region in chunks), len(prompt), triangle)
            per_layer = []
            for layer in range(model.config.num_hidden_layers):
                if layer not in capture.grads:
                    raise RuntimeError(f"layer {layer}: its attention output received no gradient")
                q, k, v, scale = capture.inputs[layer]
                per_layer.append(_layer_statistics(chunks, q, k, v, capture.grads[layer], scale))
            grad_abs.append(torch.stack([g for g, _ in per_layer]).float().cpu() / entries)
            attribution.append(torch.stack([a for _, a in per_layer]).float().cpu())
            del capture, chunks
    return LayerScores(torch.stack(grad_abs), torch.stack(attribution))


def select_layers(method: str, k: int, num_layers: int, scores: Tensor | None = None, seed: int = 0) -> list[int]:
    """The ``k`` triangle layers a method picks (ascending)."""
    if not 0 <= k <= num_layers:
        raise ValueError(f"k: expected 0 <= k <= {num_layers}, got {k}")
    if method == "gradient":
        if scores is None or scores.shape != (num_layers,):
            raise ValueError(f"scores: the gradient method needs one score per layer ({num_layers})")
        return sorted(int(i) for i in torch.argsort(scores, stable=True)[:k])
    if method == "deepest":
        return list(range(num_layers - k, num_layers))
    if method == "shallowest":
        return list(range(k))
    if method == "random":
        return sorted(random.Random(f"{seed}/{k}").sample(range(num_layers), k))
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def schedule_config(layers: Sequence[int], triangle: Triangle = PAPER_TRIANGLE) -> dict:
    """A Hydra config (dict) for a LayerSchedule: dense everywhere, ``triangle`` in ``layers``."""
    config: dict = {
        "_target_": "sparseattn.schedule.LayerSchedule",
        "_convert_": "all",  # the rules are plain lists of dicts; their patterns must be instantiated too
        "default": {"_target_": "sparseattn.patterns.Causal"},
        "rules": [],
    }
    if layers:
        config["rules"].append(
            {
                "layers": [int(i) for i in layers],
                "pattern": {
                    "_target_": "sparseattn.patterns.Triangle",
                    "sink": triangle.sink,
                    "window": triangle.window,
                    "last": triangle.last,
                },
            }
        )
    return config
