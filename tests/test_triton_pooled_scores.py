"""Block top-k's pooled scores by Triton (the interpreter on CPU) against the torch definition."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.block_topk import BlockTopK, block_means, reachable_blocks
from sparseattn.kernels.estimation.triton_pooled_scores import triton_block_means, triton_pooled_scores


@given(st.data())
@settings(max_examples=25, deadline=None)
def test_means_and_causal_scores_equal_torch(data):
    block = data.draw(st.sampled_from([32, 64]), "block")
    kv_len = data.draw(st.integers(1, 6 * block), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2]), "group")
    dim = data.draw(st.sampled_from([16, 32]), "dim")
    dtype = data.draw(st.sampled_from([torch.float16, torch.float32]), "dtype")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 999), "seed"))
    q = torch.randn(1, heads, q_len, dim, generator=gen).to(dtype)
    k = torch.randn(1, kv_heads, kv_len, dim, generator=gen).to(dtype)

    q_pool, k_pool = triton_block_means(q[0], block), triton_block_means(k[0], block)
    torch.testing.assert_close(q_pool, block_means(q[0], block), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k_pool, block_means(k[0], block), rtol=1e-5, atol=1e-6)

    got = triton_pooled_scores(q_pool, k_pool, q_len=q_len, kv_len=kv_len, block=block)
    want = BlockTopK(1, block_size=block).pooled_scores(q, k)
    reach, _ = reachable_blocks(q_len, kv_len, block, q.device)
    reach = reach.expand_as(want)
    assert torch.isneginf(got[~reach]).all(), "entries out of causal reach must be -inf"
    # fp32 dot products of D terms, summed in another order: a few ulps of the largest term sum.
    scale = (q_pool.abs().amax() * k_pool.abs().amax() * dim).item()
    torch.testing.assert_close(got[reach], want[reach], rtol=0, atol=4 * dim * torch.finfo(torch.float32).eps * scale)
