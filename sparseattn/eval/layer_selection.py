"""TriangleMix's layer selection: which layers can drop the middle of their attention.

The paper ranks layers by the gradient of the first generated token's loss with respect to the
*middle* of each layer's attention — the causal part the triangle drops (not sink, not window, not the
last query rows) — averaged over samples; layers with small gradients there become triangle layers.
The authors did not publish this code; this is our implementation.

Per layer and head, for each sample, with ``G = dL/dA`` on the middle region ``M``:

- ``grad_abs``: mean of ``|G|`` over ``M`` — the ranking statistic.
- ``attribution``: ``sum(A * G)`` over ``M`` = dL/dg for attention ``A * (1 + g * M)`` at ``g = 0``:
  the first-order change of the loss if the middle were scaled (dropping it is ``g = -1``).

Both come from one backward pass per sample through `ProbeAttention` (eager attention), with
gradient checkpointing so that only one layer's ``[heads, N, N]`` probabilities live at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparseattn.eval.eager_attention import ProbeAttention, use_probe
from sparseattn.patterns import Causal, MaskContext, Triangle

METHODS = ("gradient", "deepest", "shallowest", "random")
PAPER_TRIANGLE = Triangle()  # sink 8, window 512, last 128


@dataclass(frozen=True)
class LayerScores:
    grad_abs: Tensor  # [samples, layers, heads]
    attribution: Tensor  # [samples, layers, heads]

    @property
    def per_layer(self) -> Tensor:
        """The ranking statistic: grad_abs averaged over samples and heads, ``[layers]``."""
        return self.grad_abs.mean(dim=(0, 2))


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
        """bool [1, 1, N, N], built where the probabilities live: at 32K a CPU copy would cross the bus in
        every chunk of every layer, forward and backward."""
        ctx = MaskContext(size, size, device=device)
        rows = torch.arange(size, device=device)
        head = torch.zeros(1, 1, 1, dtype=torch.long, device=device)
        return self.middle_pattern.mask(head, rows.view(1, -1, 1), rows.view(1, 1, -1), ctx).unsqueeze(0)

    def _record(self, layer: int, grad: Tensor, middle: Tensor) -> None:
        self.grad_abs[layer] += (grad.abs() * middle).sum(dim=(0, 2, 3)).double().cpu()

    def middle_entries(self, size: int) -> int:
        if self._middle is None or self._middle.shape[-1] != size:
            self._middle = self._middle_region(size, torch.device("cpu"))
        return int(self._middle.sum())


def middle_gradients(
    model: Any,
    prompts: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    triangle: Triangle = PAPER_TRIANGLE,
    checkpointing: bool = True,
    rows_per_chunk: int | None = None,
) -> LayerScores:
    """Per-sample, per-layer, per-head middle-region gradients of ``-log p(target | prompt)``."""
    if len(prompts) != len(targets) or not prompts:
        raise ValueError(
            f"targets: expected one target per prompt (and at least one), got {len(targets)} for {len(prompts)}"
        )
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the gates need gradients; parameter grads would double the memory
    previous = model.config._attn_implementation
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode; Llama has no dropout by default
    grad_abs, attribution = [], []
    try:
        for prompt, target in tqdm(list(zip(prompts, targets, strict=True)), desc="layer gradients", unit="sample"):
            gate = _MiddleGate(triangle, layers, heads)
            use_probe(model, ProbeAttention(gate.observe, rows_per_chunk))
            device = next(model.parameters()).device
            logits = model(torch.tensor([list(prompt)], device=device), logits_to_keep=1).logits[0, -1].float()
            loss = -torch.log_softmax(logits, dim=-1)[target]
            loss.backward()
            grad_abs.append((gate.grad_abs / gate.middle_entries(len(prompt))).float())
            assert gate.gates.grad is not None  # the gates are leaves that require grad
            attribution.append(gate.gates.grad.detach().clone())
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
        model.set_attn_implementation(previous)
        for p, flag in zip(model.parameters(), saved, strict=True):
            p.requires_grad_(flag)
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
