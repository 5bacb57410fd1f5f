"""How much of each head's real attention a pattern keeps: the picture to look at before choosing a schedule.

For a prompt, the model runs densely; at every layer the dense attention probabilities ``A`` are read
(`ProbeAttention`) and, for each pattern ``P``, the kept mass ``sum_k A[q, k] * P[q, k]`` is averaged over
all query rows. 1.0 means the pattern drops nothing this head attends to; the triangle's rows within
its window and its last rows keep everything by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparseattn.eval.eager_attention import ProbeAttention, use_probe
from sparseattn.patterns import Pattern


@torch.no_grad()
def mass_kept(
    model: Any,
    prompts: Sequence[Sequence[int]],
    patterns: Mapping[str, Pattern],
    *,
    rows_per_chunk: int = 1024,
) -> dict[str, Tensor]:
    """``{pattern name: [layers, heads]}`` fraction of dense attention mass kept, averaged over rows and prompts."""
    if not patterns or not prompts:
        raise ValueError("patterns, prompts: expected at least one of each")
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    totals = {name: torch.zeros(layers, heads, dtype=torch.float64) for name in patterns}
    previous = model.config._attn_implementation
    device = next(model.parameters()).device
    try:
        for prompt in tqdm(prompts, desc="attention profile", unit="prompt"):
            size = len(prompt)
            masks = {
                name: p.to_dense(size, num_heads=p.num_heads).unsqueeze(0).to(device) for name, p in patterns.items()
            }

            def observe(layer: int, probs: Tensor, start: int, masks: Any = masks, size: Any = size) -> None:
                rows = slice(start, start + probs.shape[2])
                for name, mask in masks.items():
                    kept = (probs * mask[:, :, rows]).sum(dim=-1)  # [1, H, rows]
                    totals[name][layer] += kept.sum(dim=(0, 2)).double().cpu() / size

            use_probe(model, ProbeAttention(observe, rows_per_chunk))
            model(torch.tensor([list(prompt)], device=device), logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    return {name: (t / len(prompts)).float() for name, t in totals.items()}
