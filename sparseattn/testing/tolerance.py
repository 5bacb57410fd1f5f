"""Tolerances derived from the low-precision reference's own error, not hand-picked.

The discipline of the FlashAttention tests: compute the oracle in fp64, compute plain PyTorch attention
in the inputs' own precision, and accept a kernel whose error against the oracle is at most ``factor``
times the error of that low-precision PyTorch attention, plus a floor of a few output-dtype ulps (so fp32
inputs, whose reference is nearly exact, still get a meaningful bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.kernels.reference import reference_attention


def low_precision_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Masked attention computed entirely in ``q.dtype`` (scores, softmax and both products), GQA by repeat."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    group = q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kr, vr = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ kr.transpose(-1, -2)) * scale
    keep = mask.to(q.device).expand_as(scores)
    scores = scores.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    empty = lse.isinf().unsqueeze(-1)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return probs @ vr, lse.float()


@dataclass(frozen=True)
class Tolerance:
    """Absolute bounds on the max error of the output and of the finite lse entries."""

    out_atol: float
    lse_atol: float


@dataclass(frozen=True)
class Oracle:
    out: Tensor  # float64
    lse: Tensor  # float64, -inf on empty rows
    tolerance: Tolerance


def oracle_and_tolerance(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *, scale: float | None = None, factor: float = 2.0, ulps: float = 4.0
) -> Oracle:
    """fp64 oracle plus the tolerance: ``factor`` x (low-precision error vs fp64) + ``ulps`` output ulps."""
    out64, lse64 = reference_attention(q.double(), k.double(), v.double(), mask, scale=scale, accum_dtype=torch.float64)
    # The oracle returns lse as float32; its rounding is covered by the fp32 ulps in lse_atol.
    lse64 = lse64.double()
    low_out, low_lse = low_precision_attention(q, k, v, mask, scale=scale)
    finite = torch.isfinite(lse64)
    eps = torch.finfo(q.dtype).eps
    out_scale = float(out64.abs().max()) if out64.numel() else 1.0
    lse_scale = float(lse64[finite].abs().max()) if finite.any() else 1.0
    out_err = float((low_out.double() - out64).abs().max()) if out64.numel() else 0.0
    lse_err = float((low_lse.double() - lse64)[finite].abs().max()) if finite.any() else 0.0
    return Oracle(
        out=out64,
        lse=lse64,
        tolerance=Tolerance(
            out_atol=factor * out_err + ulps * eps * max(out_scale, 1.0),
            lse_atol=factor * lse_err + ulps * torch.finfo(torch.float32).eps * max(lse_scale, 1.0) + ulps * eps,
        ),
    )


def assert_close_to_oracle(
    out: Tensor,
    lse: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    *,
    scale: float | None = None,
    factor: float = 2.0,
) -> None:
    """Raise AssertionError unless (out, lse) matches the fp64 oracle within the derived tolerance.

    Rows the mask leaves empty must give output exactly 0 and lse -inf; nothing may be NaN.
    """
    oracle = oracle_and_tolerance(q, k, v, mask, scale=scale, factor=factor)
    out, lse = out.detach().cpu(), lse.detach().cpu()
    oracle_out, oracle_lse = oracle.out.cpu(), oracle.lse.cpu()
    assert not out.isnan().any(), "output has NaN (an unwritten or poisoned row?)"
    assert not lse.isnan().any(), "lse has NaN (an unwritten or poisoned row?)"
    empty = torch.isinf(oracle_lse)
    assert torch.equal(torch.isinf(lse) & (lse < 0), empty), "lse is -inf exactly on the rows the mask leaves empty"
    assert not out[empty].any(), "rows the mask leaves empty must have output 0"
    out_err = float((out.double() - oracle_out).abs().max())
    assert out_err <= oracle.tolerance.out_atol, (
        f"output error {out_err:.3g} > tolerance {oracle.tolerance.out_atol:.3g}"
    )
    if (~empty).any():
        lse_err = float((lse.double() - oracle_lse)[~empty].abs().max())
        assert lse_err <= oracle.tolerance.lse_atol, (
            f"lse error {lse_err:.3g} > tolerance {oracle.tolerance.lse_atol:.3g}"
        )
