"""The last-query logits kernel at real sizes on the GPU equals the fp32 torch logits (bf16, fp16, fp32), and the
line sums of the CUDA path (`triton_line_sums`, which never writes the logits) equal the CPU's.

The oracle is `last_query_logits` on CPU copies: the fp32 torch path, out of reach of TF32 settings.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparseattn.estimation.vs_scores import last_query_logits, last_query_probs, line_sums
from sparseattn.kernels.estimation.triton_vs_logits import triton_last_query_logits

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _qk(heads, kv_heads, q_len, kv_len, dim, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, heads, q_len, dim, device="cuda", generator=gen).to(dtype)
    k = torch.randn(1, kv_heads, kv_len, dim, device="cuda", generator=gen).to(dtype)
    return q, k


def dot_atol(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """Bound on |kernel - torch| per finite logit from fp32 rounding of a D-term dot product (products of
    16-bit inputs are exact in fp32): ~D * eps/2 * |q| |k| on each side, plus the rounding of the scale."""
    eps = torch.finfo(torch.float32).eps
    q_norm = float(q.float().norm(dim=-1).max())
    k_norm = float(k.float().norm(dim=-1).max())
    return (q.shape[-1] + 2) * eps * abs(scale) * q_norm * k_norm


@pytest.mark.parametrize(
    "heads, kv_heads, q_len, kv_len, dim, dtype, n",
    [
        (32, 8, 8192, 8192, 128, torch.bfloat16, 64),  # Llama-8B heads
        (32, 8, 8192, 8192, 128, torch.float16, 64),
        (8, 2, 3000, 8000, 256, torch.bfloat16, 64),  # chunked prefill, ragged kv_len, the widest head
        (8, 8, 4096, 4096, 64, torch.float32, 100),
        (4, 1, 40, 5000, 128, torch.bfloat16, 40),  # q_len < last_q
    ],
)
def test_kernel_equals_fp32_torch(heads, kv_heads, q_len, kv_len, dim, dtype, n):
    q, k = _qk(heads, kv_heads, q_len, kv_len, dim, dtype)
    scale = 1.0 / math.sqrt(dim)
    out = triton_last_query_logits(q, k, n, scale).cpu()
    ref = last_query_logits(q.cpu(), k.cpu(), n, scale)
    masked = ref == -math.inf
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.equal(out == -math.inf, masked)
    assert torch.isfinite(out[~masked]).all()
    err = float((out[~masked] - ref[~masked]).abs().max())
    assert err <= dot_atol(q, k, scale), err


def test_probs_on_cuda_match_probs_on_cpu():
    q, k = _qk(32, 8, 8192, 8192, 128, torch.bfloat16, seed=1)
    gpu = last_query_probs(q, k, 64, None).cpu()
    cpu = last_query_probs(q.cpu(), k.cpu(), 64, None)
    # Logits within d of each other give probabilities within a factor exp(2d) (+ the softmaxes' own rounding).
    atol = dot_atol(q, k, 1.0 / math.sqrt(128))
    assert torch.equal(gpu == 0, cpu == 0)
    assert torch.allclose(gpu, cpu, rtol=2.5 * atol + 1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "heads, kv_heads, q_len, kv_len, dim, dtype, last_q",
    [
        (14, 2, 32768, 32768, 64, torch.bfloat16, 64),  # Qwen2.5-0.5B's layer
        (32, 8, 8192, 8192, 128, torch.bfloat16, 64),  # Llama-8B heads
        (8, 2, 3000, 8003, 256, torch.float16, 100),  # chunked prefill, ragged, two row tiles, the widest head
        (4, 4, 20, 777, 64, torch.float32, 64),  # q_len < last_q, fp32 (IEEE products)
    ],
)
def test_line_sums_on_cuda_match_the_cpu_sums(heads, kv_heads, q_len, kv_len, dim, dtype, last_q):
    """`triton_line_sums` (the CUDA path) against the torch path on the CPU, at real shapes."""
    q, k = _qk(heads, kv_heads, q_len, kv_len, dim, dtype, seed=2)
    columns, diagonals = (t.cpu() for t in line_sums(q, k, last_q, None))
    want_columns, want_diagonals = line_sums(q.cpu(), k.cpu(), last_q, None)
    # Each sum adds at most last_q probabilities, each within a factor exp(2 * dot_atol) of the CPU's.
    rtol = 2.5 * dot_atol(q, k, 1.0 / math.sqrt(dim)) + 1e-5
    assert torch.allclose(columns, want_columns, rtol=rtol, atol=1e-7)
    assert torch.allclose(diagonals, want_diagonals, rtol=rtol, atol=1e-7)
    n = float(min(last_q, q_len))
    assert torch.allclose(columns.sum(-1), torch.full((heads,), n), rtol=1e-4)
    assert torch.allclose(diagonals.sum(-1), torch.full((heads,), n), rtol=1e-4)
