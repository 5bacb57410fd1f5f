"""Gradient oracle and derived tolerances for attention backends, as `tolerance.py` does for the output.

The oracle is fp64 autograd through `reference_attention`. The yardstick is autograd through plain
PyTorch attention in the inputs' own precision (`low_precision_attention`): a backend's gradient may
differ from the oracle by at most ``factor`` times that yardstick's error, plus a floor of ``ulps``
ulps of the inputs' dtype at the magnitude of the terms each gradient sums (`summand_magnitudes`).

That floor is not the gradient's own magnitude: a flash-style backward forms
``dS = P * (dP - Delta)`` with ``Delta = rowsum(dO * O)`` from the computed output, where autograd's
softmax backward uses ``rowsum(P * dP)``. When a row's probability sits on one key the two cancel to
zero exactly in autograd but only to rounding in the kernel, so a gradient that is 0 in the oracle
carries an error of a few ulps of the terms that cancelled (seen: dk off by 1.4e-6 in fp32 where every
query attends to one gathered column).
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


def summand_magnitudes(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dout: Tensor, *, scale: float | None = None
) -> tuple[float, float, float]:
    """The largest sum of absolute terms behind each entry of ``(dq, dk, dv)``, in fp64.

    With ``T = P * (|dP| + |Delta|)`` (the magnitudes that ``dS`` cancels), ``dq`` sums ``scale * T @ |k|``,
    ``dk`` sums ``scale * T^T @ |q|`` over a kv head's query heads, and ``dv`` sums ``P^T @ |dO|``.
    """
    q, k, v, dout = q.double(), k.double(), v.double(), dout.double()
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kr, vr = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ kr.transpose(-1, -2)) * scale  # [B, H, q_len, kv_len]
    keep = (mask if mask.dim() == 4 else mask.unsqueeze(0)).to(q.device).expand_as(scores)
    scores = scores.masked_fill(~keep, -torch.inf)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse.masked_fill(lse.isinf(), 0.0)).masked_fill(~keep, 0.0)
    delta = (dout * (probs @ vr)).sum(-1, keepdim=True)
    terms = probs * ((dout @ vr.transpose(-1, -2)).abs() + delta.abs())

    def by_kv_head(t: Tensor) -> Tensor:
        return t.unflatten(1, (k.shape[1], group)).sum(2)

    dq = scale * terms @ kr.abs()
    dk = by_kv_head(scale * terms.transpose(-1, -2) @ q.abs())
    dv = by_kv_head(probs.transpose(-1, -2) @ dout.abs())
    return tuple(float(t.max()) if t.numel() else 0.0 for t in (dq, dk, dv))  # type: ignore[return-value]


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
    """fp64 gradients and tolerances ``factor`` x (low-precision autograd error) + ``ulps`` ulps of the
    larger of each gradient's magnitude and its summands' (`summand_magnitudes`).

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
    summands = summand_magnitudes(q, k, v, mask, dout, scale=scale)
    for e, lo, summed in zip(exact, low, summands, strict=True):
        magnitude = float(e.abs().max()) if e.numel() else 1.0
        err = float((lo.double() - e).abs().max()) if e.numel() else 0.0
        atol.append(factor * err + ulps * eps * max(magnitude, summed, 1.0))
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
