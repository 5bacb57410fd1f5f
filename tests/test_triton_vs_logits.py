"""The last-query logits kernel equals the torch logits of `vs_scores` (CPU: Triton's interpreter, small sizes).

bf16 is not tested here: the interpreter's bf16 ``tl.dot`` is wrong; tests/gpu/test_vs_logits_gpu.py covers it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseattn.estimation.vs_scores import last_query_logits
from sparseattn.kernels.estimation import triton_vs_logits
from sparseattn.kernels.estimation.triton_vs_logits import triton_last_query_logits

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def poison_output(monkeypatch):
    """Fill the output with NaN, so an entry the kernel never writes cannot pass as correct."""
    original = triton_vs_logits._new_output
    monkeypatch.setattr(triton_vs_logits, "_new_output", lambda *a: original(*a).fill_(math.nan))


def _random(gen: torch.Generator, heads: int, length: int, dim: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """``[1, heads, length, dim]`` standard normal in ``dtype``, stored as ``layout`` says.

    "bshd" is the [B, S, H, D] storage a model's projections give (a transposed view); "dsh" has a
    non-unit last stride, which the launcher must copy.
    """
    if layout == "bshd":
        return torch.randn(1, length, heads, dim, generator=gen).to(dtype).transpose(1, 2)
    if layout == "dsh":
        return torch.randn(1, heads, dim, length, generator=gen).to(dtype).transpose(2, 3)
    return torch.randn(1, heads, length, dim, generator=gen).to(dtype)


def dot_atol(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """A bound on |kernel - torch| for every finite logit, from fp32 rounding alone.

    Each side sums D exact products (fp16 and fp32 inputs multiply exactly or nearly so in fp32) with an
    error of at most ~D * eps/2 * sum|q_i k_i| <= D * eps/2 * |q| |k| (Cauchy-Schwarz), then rounds once
    more when scaling; the two errors add, and any summation order is covered.
    """
    dim = q.shape[-1]
    eps = torch.finfo(torch.float32).eps
    q_norm = float(q.float().norm(dim=-1).max())
    k_norm = float(k.float().norm(dim=-1).max())
    return (dim + 2) * eps * abs(scale) * q_norm * k_norm


@st.composite
def cases(draw, heads_choices=(1, 2, 4), kv_heads_choices=(1, 2, 4)):
    kv_len = draw(st.integers(1, 300))
    q_len = draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)))
    last_q = draw(st.sampled_from([1, 5, 16, 64, 100]))
    heads = draw(st.sampled_from(heads_choices))
    kv_heads = draw(st.sampled_from([h for h in kv_heads_choices if heads % h == 0]))
    dim = draw(st.sampled_from([16, 32, 64]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    layout = draw(st.sampled_from(["contiguous", "bshd", "dsh"]))
    scale = draw(st.one_of(st.just(1.0 / math.sqrt(dim)), st.floats(0.01, 2.0)))
    seed = draw(st.integers(0, 2**31 - 1))
    return kv_len, q_len, last_q, heads, kv_heads, dim, dtype, layout, scale, seed


def case_inputs(case) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """``(q, k, n, scale)`` of a drawn case, ``n`` the last rows the kernels read."""
    kv_len, q_len, last_q, heads, kv_heads, dim, dtype, layout, scale, seed = case
    gen = torch.Generator().manual_seed(seed)
    q = _random(gen, heads, q_len, dim, dtype, layout)
    k = _random(gen, kv_heads, kv_len, dim, dtype, layout)
    return q, k, min(last_q, q_len), scale


@SETTINGS
@given(cases())
def test_kernel_equals_torch_logits(case):
    q, k, n, scale = case_inputs(case)
    heads, kv_len = q.shape[1], k.shape[2]

    out = triton_last_query_logits(q, k, n, scale)
    ref = last_query_logits(q, k, n, scale)

    assert out.dtype == torch.float32 and out.shape == (heads, n, kv_len)
    masked = ref == -math.inf
    assert torch.equal(out == -math.inf, masked)
    finite = ~masked  # never empty: row r sees keys 0..kv_len - n + r
    assert torch.isfinite(out[finite]).all()
    assert (out[finite] - ref[finite]).abs().max() <= dot_atol(q, k, scale)


def test_mask_is_bottom_right_causal_over_the_last_rows():
    q = torch.ones(1, 2, 5, 16)
    k = torch.ones(1, 1, 9, 16)
    out = triton_last_query_logits(q, k, 3, 0.5)
    row_pos = torch.arange(9 - 3, 9).view(3, 1)
    expected = torch.where(torch.arange(9).view(1, 9) <= row_pos, 8.0, -math.inf).expand(2, 3, 9)
    assert torch.equal(out, expected)


def _inputs(**over):
    args = dict(q=torch.randn(1, 4, 8, 16), k=torch.randn(1, 2, 12, 16), n=4, scale=0.25)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, name, words",
    [
        (dict(q=torch.randn(1, 4, 8, 16).double()), "q", "float64"),
        (dict(q=torch.randn(1, 4, 8, 16).half()), "q, k", "one dtype"),
        (dict(q=torch.randn(4, 8, 16)), "q", r"\[1, H, S, D\]"),
        (dict(k=torch.randn(2, 2, 12, 16)), "k", r"\[1, H, S, D\]"),
        (dict(q=torch.randn(1, 4, 8, 24), k=torch.randn(1, 2, 12, 24)), "q", "head dim"),
        (dict(k=torch.randn(1, 2, 12, 32)), "k", "Hkv dividing 4"),
        (dict(k=torch.randn(1, 3, 12, 16)), "k", "Hkv dividing 4"),
        (dict(q=torch.randn(1, 4, 13, 16)), "q", "q_len <= kv_len"),
        (dict(n=0), "n", "1..q_len=8"),
        (dict(n=9), "n", "1..q_len=8"),
        (dict(n=2.0), "n", "an int"),
        (dict(scale=math.nan), "scale", "finite"),
        (dict(k=[1.0]), "k", "a tensor"),
    ],
)
def test_rejects_bad_inputs(over, name, words):
    with pytest.raises(ValueError, match=rf"^{name}: .*{words}"):
        triton_last_query_logits(**_inputs(**over))


def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"^q: .*CUDA"):
        triton_last_query_logits(**_inputs())
