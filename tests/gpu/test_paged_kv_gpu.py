"""The paged-KV forward kernel on the GPU: equal to the fp64 oracle and to the contiguous kernel's pointer
launch at 4K-8K keys (bf16 and fp16, GQA, shuffled pages, a chunk of a ragged prompt)."""

from __future__ import annotations

import pytest
import torch

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.attention.paged import paged_config, paged_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Streaming, Triangle
from sparseattn.testing.tolerance import assert_close_to_oracle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def paged_copy(k: torch.Tensor, page_size: int, order: torch.Tensor) -> torch.Tensor:
    """``k`` [B, Hkv, S, D] in pages [num_pages, page_size, Hkv, D], sequence b's page i at order[b, i]."""
    batch, kv_heads, kv_len, dim = k.shape
    pages = order.shape[1]
    padded = torch.nn.functional.pad(k, (0, 0, 0, pages * page_size - kv_len))
    out = torch.full((order.numel() + 5, page_size, kv_heads, dim), float("nan"), dtype=k.dtype, device=k.device)
    out[order.view(-1).long()] = (
        padded.view(batch, kv_heads, pages, page_size, dim).permute(0, 2, 3, 1, 4).flatten(0, 1)
    )
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("pattern", "q_len", "kv_len", "block", "page_size"),
    [
        (Causal(), 8192, 8192, (128, 128), 128),
        (Triangle(), 4096, 8192, (64, 64), 256),
        (Streaming(sink=64, window=1000), 3000, 7001, (128, 64), 64),
        (Triangle(sink=64, window=512, last=128), 8192, 8192, (32, 32), 32),
    ],
)
def test_paged_equals_oracle_and_contiguous(dtype, pattern, q_len, kv_len, block, page_size):
    torch.manual_seed(0)
    batch, heads, kv_heads, dim = 2, 4, 2, 128  # the fp64 oracle holds [2, 4, 8K, 8K]
    q = torch.randn(batch, heads, q_len, dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, kv_heads, kv_len, dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    pages = -(-kv_len // page_size)
    order = torch.randperm(batch * pages + 5, device="cuda")[: batch * pages].view(batch, pages).to(torch.int32)
    layout = lower(pattern, q_len, kv_len, block_size=block, device="cuda")
    out, lse = paged_sparse_attention(
        q, paged_copy(k, page_size, order), paged_copy(v, page_size, order), order, layout
    )
    torch.cuda.synchronize()
    assert_close_to_oracle(out, lse, q, k, v, layout.to_dense())
    ref_out, ref_lse = triton_sparse_attention(q, k, v, layout, config=paged_config(layout, dim))
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
