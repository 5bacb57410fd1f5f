"""Gradient oracle and derived tolerances for attention backends, as `tolerance.py` does for the output.

The oracle is fp64 autograd through `reference_attention`. The yardstick is autograd through plain
PyTorch attention in the inputs' own precision (`low_precision_attention`): a backend's gradient may
differ from the oracle by at most ``factor`` times that yardstick's error, plus a floor of ``ulps``
ulps of the inputs' dtype at the gradient's magnitude (fp32 yardsticks are nearly exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.kernels.reference import reference_attention
from sparseattn.testing.tolerance import low_precision_attention

GRAD_NAMES = ("dq", "dk", "dv")


@dataclass(frozen=True)
class GradOracle:
    """fp64 gradients ``(dq, dk, dv)`` of ``sum(out * dout)`` and an absolute tolerance for each."""

    grads: tuple[Tensor, Tensor, Tensor]
    atol: tuple[float, float, float]


def _grads(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, dout: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``sum(fn(q, k, v) * dout)`` with respect to q, k and v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(fn(*leaves), leaves, dout.to(leaves[0].dtype))
    return grads[0], grads[1], grads[2]


def grad_oracle_and_tolerance(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    dout: Tensor,
    *,
    scale: float | None = None,
    factor: float = 2.0,
    ulps: float = 8.0,
) -> GradOracle:
    """fp64 gradients and tolerances ``factor`` x (low-precision autograd error) + ``ulps`` ulps each.

    ``mask`` is bool ``[B|1, H|1, q_len, kv_len]``; rows it leaves empty have zero gradient.
    """
    exact = _grads(
        lambda a, b, c: reference_attention(a, b, c, mask, scale=scale, accum_dtype=torch.float64)[0],
        q.double(),
        k.double(),
        v.double(),
        dout.double(),
    )
    low = _grads(lambda a, b, c: low_precision_attention(a, b, c, mask, scale=scale)[0], q, k, v, dout)
    eps = torch.finfo(q.dtype).eps
    atol = []
    for e, lo in zip(exact, low, strict=True):
        magnitude = float(e.abs().max()) if e.numel() else 1.0
        err = float((lo.double() - e).abs().max()) if e.numel() else 0.0
        atol.append(factor * err + ulps * eps * max(magnitude, 1.0))
    return GradOracle(exact, (atol[0], atol[1], atol[2]))


def assert_grads_close_to_oracle(
    grads: tuple[Tensor, Tensor, Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    dout: Tensor,
    *,
    scale: float | None = None,
    factor: float = 2.0,
) -> None:
    """Raise AssertionError unless ``(dq, dk, dv)`` match the fp64 oracle within the derived tolerance.

    Nothing may be NaN (an unwritten gradient row of a NaN-poisoned buffer shows up here); query rows the
    mask leaves empty and keys no query attends must get exactly zero.
    """
    oracle = grad_oracle_and_tolerance(q, k, v, mask, dout, scale=scale, factor=factor)
    full_mask = mask if mask.dim() == 4 else mask.unsqueeze(0)
    empty_rows = ~full_mask.any(-1).expand(q.shape[:3])
    group = q.shape[1] // k.shape[1]
    attended = full_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).any(2)  # [B, Hq, kv_len]
    unattended_keys = ~attended.view(q.shape[0], k.shape[1], group, k.shape[2]).any(2)
    for name, grad, want, atol in zip(GRAD_NAMES, grads, oracle.grads, oracle.atol, strict=True):
        got = grad.detach().cpu()
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        assert not got.isnan().any(), f"{name} has NaN (an unwritten or poisoned row?)"
        empty = empty_rows if name == "dq" else unattended_keys
        assert not got[empty.cpu()].any(), f"{name}: rows or keys the mask never pairs must get 0"
        err = float((got.double() - want.cpu()).abs().max()) if got.numel() else 0.0
        assert err <= atol, f"{name}: error {err:.3g} > tolerance {atol:.3g}"
