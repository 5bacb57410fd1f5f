"""`BlockMass`'s sampled shares from the Triton kernel on the GPU equal the torch path on CPU copies, at a
real layer shape (Qwen2.5-0.5B's 14 query / 2 kv heads, head dim 64, and Llama's 32 / 8 at 128), bf16."""

from __future__ import annotations

import pytest
import torch

from sparseattn.estimation.block_mass import sampled_block_shares

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("heads,kv_heads,dim,q_len,kv_len", [(14, 2, 64, 8192, 8192), (32, 8, 128, 4000, 6000)])
def test_cuda_shares_equal_the_cpu_shares(heads, kv_heads, dim, q_len, kv_len):
    gen = torch.Generator(device="cuda").manual_seed(q_len)
    q = torch.randn(1, heads, q_len, dim, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(1, kv_heads, kv_len, dim, device="cuda", generator=gen).to(torch.bfloat16)
    got = sampled_block_shares(q, k, 64, 4).cpu()
    want = sampled_block_shares(q.cpu(), k.cpu(), 64, 4)
    # Both multiply bf16 inputs exactly in fp32 and differ in summation order only.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
