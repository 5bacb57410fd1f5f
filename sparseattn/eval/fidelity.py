"""Decode-position fidelity: how far a sparse prefill moves the next-token distributions after it.

Both runs score the same tokens (the dense run's greedy answer) against their own caches, so the
comparison isolates what the sparse prefill wrote into the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Fidelity:
    kl: Tensor  # [positions], KL(dense || sparse) in nats
    top1: Tensor  # [positions], bool: same argmax


def compare_logits(dense: Tensor, sparse: Tensor) -> Fidelity:
    """Per-position KL(dense‖sparse) and top-1 agreement of two ``[positions, vocab]`` logit tensors."""
    if dense.shape != sparse.shape or dense.dim() != 2:
        raise ValueError(
            f"sparse: expected shape {tuple(dense.shape)} like dense ([positions, vocab]), got {tuple(sparse.shape)}"
        )
    log_p = torch.log_softmax(dense.double(), dim=-1)
    log_q = torch.log_softmax(sparse.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # rounding can give -1e-17
    return Fidelity(kl.float(), dense.argmax(-1) == sparse.argmax(-1))
