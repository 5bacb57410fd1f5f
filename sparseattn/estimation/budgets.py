"""Validation of the parameters dynamic patterns share: budgets given once for all heads or per head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparseattn.memo import shared_cache

Budget = int | tuple[int, ...]
Threshold = float | tuple[float, ...]


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


def check_threshold(value: object, name: str = "threshold") -> Threshold:
    """A share in (0, 1] for every head, or one per head (lists, OmegaConf lists accepted and frozen)."""

    def one(label: str, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"{label}: expected a share of the attention mass in (0, 1], got {v!r}")
        return float(v)

    if isinstance(value, (int, float)):
        return one(name, value)
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        values = list(value)
        if not values:
            raise ValueError(f"{name}: expected a float or one float per head, got an empty sequence")
        return tuple(one(f"{name}[{h}]", v) for h, v in enumerate(values))
    raise ValueError(f"{name}: expected a float or one float per head, got {value!r}")


def per_head_tensor(
    name: str,
    value: int | float | tuple[int, ...] | tuple[float, ...],
    heads: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``[heads]`` tensor of a per-head parameter given once or per head, built without a host sync.

    A single value is filled on the device; a tuple is copied to the device once per (values, device) and
    shared (`per_head_values`): never modify the result in place.
    """
    if isinstance(value, tuple):
        if len(value) != heads:
            raise ValueError(f"{name}: {len(value)} per-head values, but q has {heads} heads")
        return per_head_values(value, dtype, torch.device(device))
    return torch.full((heads,), value, dtype=dtype, device=device)


@shared_cache(maxsize=64)
def per_head_values(
    values: tuple[bool, ...] | tuple[int, ...] | tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``values`` on ``device``, copied once. A copy per estimate came from pageable host memory, which a
    CUDA graph cannot capture (`estimation/captured.py`), and cost a transfer per layer; non-blocking, since
    a blocking copy to a GPU would wait for every kernel queued before it."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def budget_tensor(name: str, budget: Budget, heads: int, device: torch.device) -> Tensor:
    """``[heads]`` int64 tensor of a budget; a per-head budget must match ``heads``."""
    return per_head_tensor(name, budget, heads, torch.long, device)


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
