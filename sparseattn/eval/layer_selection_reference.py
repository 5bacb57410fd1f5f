"""The oracle for `middle_gradients`: TriangleMix's statistic computed literally.

Each layer's attention runs eagerly (`ProbeAttention`), its probabilities ``A`` are gated as
``A * (1 + g * M)`` on the middle region ``M``, and one backward pass per sample reads ``dL/dA`` on ``M``
from a hook and ``dL/dg`` from the gates. Gradient checkpointing (per layer, and per row chunk inside
the probe) keeps one chunk of one layer's fp32 probabilities alive at a time; the cost is still the
eager ``[heads, N, N]`` softmax and its backward in every layer, too slow for 32K-token samples
on an H100, which is why `middle_gradients` computes the same figures from ``dO`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparseattn.eval.eager_attention import ProbeAttention, use_probe
from sparseattn.eval.layer_selection import (
    PAPER_TRIANGLE,
    LayerScores,
    check_targets,
    gradient_pass,
    middle_region,
    require_middle,
)
from sparseattn.patterns import Causal, Triangle


class _MiddleGate:
    """The observer for `ProbeAttention`: gates the middle region and records the gradient there."""

    def __init__(self, triangle: Triangle, num_layers: int, num_heads: int) -> None:
        self.middle_pattern = Causal() & ~triangle
        self.gates = torch.zeros(num_layers, num_heads, requires_grad=True)
        self.grad_abs = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self._middle: Tensor | None = None

    def observe(self, layer: int, probs: Tensor, start: int) -> Tensor | None:
        if not torch.is_grad_enabled():
            return None
        size = probs.shape[-1]
        if self._middle is None or self._middle.shape[-1] != size or self._middle.device != probs.device:
            self._middle = self._middle_region(size, probs.device)
        middle = self._middle[:, :, start : start + probs.shape[2]]
        gated = probs * (1 + self.gates[layer].to(probs.device).view(1, -1, 1, 1) * middle)
        gated.register_hook(lambda grad: self._record(layer, grad, middle))
        return gated

    def _middle_region(self, size: int, device: torch.device) -> Tensor:
        """bool [1, 1, N, N], built where the probabilities live (a CPU copy would cross the bus in every
        chunk of every layer, forward and backward)."""
        return middle_region(self.middle_pattern, size, 0, size, device).unsqueeze(0)

    def _record(self, layer: int, grad: Tensor, middle: Tensor) -> None:
        self.grad_abs[layer] += (grad.abs() * middle).sum(dim=(0, 2, 3)).double().cpu()

    def middle_entries(self, size: int) -> int:
        if self._middle is None or self._middle.shape[-1] != size:
            self._middle = self._middle_region(size, torch.device("cpu"))
        return int(self._middle.sum())


def middle_gradients_reference(
    model: Any,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    triangle: Triangle = PAPER_TRIANGLE,
    checkpointing: bool = True,
    rows_per_chunk: int | None = None,
) -> LayerScores:
    """`middle_gradients` the slow, obvious way: one backward through the gated probabilities themselves."""
    check_targets(prompts, targets)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    grad_abs, attribution = [], []
    with gradient_pass(model, checkpointing):  # only the gates need gradients
        for prompt, target in tqdm(list(zip(prompts, targets, strict=True)), desc="layer gradients", unit="sample"):
            gate = _MiddleGate(triangle, layers, heads)
            use_probe(model, ProbeAttention(gate.observe, rows_per_chunk))
            device = next(model.parameters()).device
            logits = model(torch.tensor([list(prompt)], device=device), logits_to_keep=1).logits[0, -1].float()
            loss = -torch.log_softmax(logits, dim=-1)[target]
            loss.backward()
            entries = require_middle(gate.middle_entries(len(prompt)), len(prompt), triangle)
            grad_abs.append((gate.grad_abs / entries).float())
            assert gate.gates.grad is not None  # the gates are leaves that require grad
            attribution.append(gate.gates.grad.detach().clone())
    return LayerScores(torch.stack(grad_abs), torch.stack(attribution))
