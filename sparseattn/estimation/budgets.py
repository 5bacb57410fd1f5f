"""Validation of the parameters dynamic patterns share: budgets given once for all heads or per head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Budget = int | tuple[int, ...]


def scalar_budget(budget: Budget) -> int:
    """The budget of a single-head pattern (one int; a one-element tuple is the same budget)."""
    if isinstance(budget, int):
        return budget
    if len(budget) != 1:
        raise ValueError(f"budget: expected one budget for one head, got {budget!r}")
    return budget[0]


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def check_budget(name: str, value: object, minimum: int = 1) -> Budget:
    """An int for every head, or a tuple of ints, one per head (lists are accepted and frozen)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not value:
            raise ValueError(f"{name}: expected an int or one int per head, got an empty sequence")
        return tuple(check_int(f"{name}[{h}]", v, minimum) for h, v in enumerate(value))
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):  # OmegaConf ListConfig
        return check_budget(name, list(value), minimum)
    return check_int(name, value, minimum)


def budget_heads(*budgets: Budget) -> int | None:
    """The head count per-head budgets agree on, None when every budget is a single int."""
    counts = {len(b) for b in budgets if isinstance(b, tuple)}
    if len(counts) > 1:
        raise ValueError(f"budgets: per-head budgets must have one length, got lengths {sorted(counts)}")
    return counts.pop() if counts else None


def budget_tensor(name: str, budget: Budget, heads: int, device: torch.device) -> Tensor:
    """``[heads]`` int64 tensor of a budget; a per-head budget must match ``heads``."""
    if isinstance(budget, tuple):
        if len(budget) != heads:
            raise ValueError(f"{name}: {len(budget)} per-head budgets, but q has {heads} heads")
        return torch.tensor(budget, dtype=torch.long, device=device)
    return torch.full((heads,), budget, dtype=torch.long, device=device)


def budget_max(budget: Budget) -> int:
    return max(budget) if isinstance(budget, tuple) else budget


def check_qk(q: Tensor, k: Tensor) -> None:
    """Shapes a dynamic estimate accepts: one sequence, ``[1, Hq, q_len, D]`` and ``[1, Hkv, kv_len, D]``."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a tensor [1, heads, seq_len, head_dim], got {getattr(t, 'shape', t)!r}")
        if t.shape[0] != 1:
            raise ValueError(f"{name}: dynamic patterns are estimated per sequence; expected batch 1, got {t.shape[0]}")
    if k.shape[-1] != q.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"k: expected [1, Hkv, kv_len, {q.shape[-1]}] with Hkv dividing {q.shape[1]}, got {tuple(k.shape)}"
        )
    if not 0 < q.shape[2] <= k.shape[2]:
        raise ValueError(f"q: expected 0 < q_len <= kv_len, got q_len={q.shape[2]}, kv_len={k.shape[2]}")
