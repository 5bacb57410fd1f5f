"""`sparse_attention`: every backend against the oracle, and clear errors on bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import BlockLayout, Causal, Columns, Triangle, Window, sparse_attention
from sparseattn.kernels.reference import reference_attention
from sparseattn.lowering import lower
from sparseattn.testing import assert_close_to_oracle, lengths, patterns, per_head_patterns


def qkv(batch, heads, kv_heads, q_len, kv_len, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=g).to(dtype)
    return q, k, v


# Flex runs eagerly on the CPU, about 0.4 s an example.
@settings(max_examples=25, deadline=None)
@given(
    p=st.one_of(patterns(max_len=96, max_leaves=4), per_head_patterns(max_len=96, max_heads=4)),
    sizes=lengths(max_len=96),
    group=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_flex_equals_oracle(p, sizes, group, seed):
    heads = p.num_heads or 2 * group
    kv_heads = heads // group if heads % group == 0 else heads
    q, k, v = qkv(1, heads, kv_heads, *sizes, seed=seed)
    layout = lower(p, *sizes, block_size=(32, 32))
    out, lse = sparse_attention(q, k, v, layout, impl="flex", return_lse=True)
    mask = p.to_dense(*sizes, num_heads=p.num_heads).unsqueeze(0)
    assert_close_to_oracle(out, lse, q, k, v, mask)
    # Without return_lse Flex is called for its output alone (the call whose backward fits an H100).
    torch.testing.assert_close(sparse_attention(q, k, v, layout, impl="flex"), out, rtol=0, atol=0)


def test_reference_from_pattern_and_from_layout_agree():
    q, k, v = qkv(2, 4, 2, 50, 70)
    p = Triangle(sink=2, window=9, last=5)
    a = sparse_attention(q, k, v, p, impl="reference")
    b = sparse_attention(q, k, v, lower(p, 50, 70, block_size=(32, 32)), impl="reference")
    torch.testing.assert_close(a, b)


def test_empty_rows_give_zero_and_minus_inf():
    q, k, v = qkv(1, 2, 2, 8, 8)
    p = Columns((7,)) & Causal()  # rows 0..6 see nothing
    for impl in ("reference", "flex"):
        out, lse = sparse_attention(q, k, v, p, impl=impl, return_lse=True)
        assert not out.isnan().any()
        assert (out[:, :, :7] == 0).all()
        assert torch.isinf(lse[:, :, :7]).all() and (lse[:, :, :7] < 0).all()
        assert torch.isfinite(lse[:, :, 7]).all()


def test_reference_matches_sdpa_on_causal():
    q, k, v = qkv(1, 4, 4, 40, 40)
    mask = Causal().to_dense(40).unsqueeze(0)
    out, _ = reference_attention(q, k, v, mask)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_scale_is_applied():
    q, k, v = qkv(1, 2, 2, 16, 16)
    a = sparse_attention(q, k, v, Causal(), impl="reference", scale=0.5)
    b = sparse_attention(q * (0.5 * math.sqrt(16)), k, v, Causal(), impl="reference")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, k, v: (q[0], k, v), "q: expected shape"),
        (lambda q, k, v: (q.half(), k, v), "dtype"),
        (lambda q, k, v: (q.int(), k, v), "q: expected dtype"),
        (lambda q, k, v: (q, k[:, :, :10], v), "v: expected the shape of k"),
        (lambda q, k, v: (q[:, :3], k, v), "GQA"),
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), "head_dim"),
        (lambda q, k, v: (q, k[:1], v[:1]), "batch"),
        (lambda q, k, v: (q, k[:, :, :10], v[:, :, :10]), "q_len <= kv_len"),
    ],
)
def test_bad_tensors_are_named(make, message):
    q, k, v = qkv(2, 4, 2, 16, 32)
    with pytest.raises(ValueError, match=message):
        sparse_attention(*make(q, k, v), Causal(), impl="reference")


def test_bad_pattern_layout_and_impl_are_named():
    q, k, v = qkv(1, 4, 2, 16, 32)
    with pytest.raises(ValueError, match="impl"):
        sparse_attention(q, k, v, Causal(), impl="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layout: built for"):
        sparse_attention(q, k, v, lower(Causal(), 16, 16), impl="reference")
    with pytest.raises(ValueError, match="heads"):
        sparse_attention(q, k, v, Columns(((1,), (2,), (3,))), impl="reference")
    with pytest.raises(ValueError, match="pattern_or_layout"):
        sparse_attention(q, k, v, "causal", impl="reference")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        sparse_attention(q, k, v, Window(3), impl="reference", scale=-1.0)
    layout = BlockLayout.from_dense(torch.ones(1, 3, 16, 32, dtype=torch.bool), (32, 32))
    with pytest.raises(ValueError, match="broadcast"):
        sparse_attention(q, k, v, layout, impl="reference")
