"""The vertical-slash line sums formed by the Triton kernel (the interpreter on CPU) from the logits and
their row lse equal the torch path, their oracle (`column_sums` and `diagonal_sums` of the softmax): random
logits with the causal mask of the last rows, ragged key counts, more rows than one chunk of the kernel,
widths spanning several programs, and heads whose mass sits on a few lines."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.vs_scores import column_sums, diagonal_sums, last_query_logits
from sparseattn.kernels.estimation.triton_line_sums import BLOCK, triton_line_sums


def oracle(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(logits.double(), dim=-1)
    return column_sums(probs).float(), diagonal_sums(probs).float()


def causal_logits(heads: int, n: int, kv_len: int, seed: int, spread: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, 16, generator=gen) * spread
    k = torch.randn(1, heads, kv_len, 16, generator=gen)
    return last_query_logits(q, k, n, 1 / math.sqrt(16))


def check(logits: torch.Tensor) -> None:
    columns, diagonals = triton_line_sums(logits, torch.logsumexp(logits, dim=-1))
    want_columns, want_diagonals = oracle(logits)
    torch.testing.assert_close(columns, want_columns, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diagonals, want_diagonals, rtol=1e-5, atol=1e-6)
    rows = logits.shape[1]
    torch.testing.assert_close(columns.sum(-1), torch.full((logits.shape[0],), float(rows)), rtol=1e-5, atol=1e-5)


@given(
    heads=st.integers(1, 3),
    n=st.integers(1, 80),
    extra=st.integers(0, 3 * BLOCK),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_kernel_equals_the_torch_sums(heads, n, extra, seed):
    check(causal_logits(heads, n, n + extra, seed))


def test_peaked_heads_put_their_mass_on_their_lines():
    """A head whose last rows attend only to key 5 and one whose rows attend only to their own diagonal 3:
    the kernel finds each line's whole mass, at a width of several programs."""
    n, kv_len = 64, 3 * BLOCK + 17
    logits = torch.full((2, n, kv_len), -30.0)
    positions = torch.arange(kv_len - n, kv_len)
    logits[0, :, 5] = 30.0
    logits[1, torch.arange(n), positions - 3] = 30.0
    future = torch.arange(kv_len).view(1, -1) > positions.view(-1, 1)
    logits.masked_fill_(future, -math.inf)
    check(logits)
    columns, diagonals = triton_line_sums(logits, torch.logsumexp(logits, dim=-1))
    assert columns[0, 5] == pytest.approx(n, rel=1e-4) and diagonals[1, 3] == pytest.approx(n, rel=1e-4)


def test_bad_inputs_name_the_argument():
    logits = causal_logits(1, 4, 40, 0)
    with pytest.raises(ValueError, match="logits: expected fp32"):
        triton_line_sums(logits.double(), torch.logsumexp(logits, -1))
    with pytest.raises(ValueError, match="lse: expected fp32"):
        triton_line_sums(logits, torch.logsumexp(logits, -1)[:, :2])
