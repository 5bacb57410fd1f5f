"""`BlockMass`'s sampled shares from the flash-style Triton kernel (the interpreter on CPU) equal the torch
path, their oracle: GQA, ragged lengths, queries that are a chunk of the keys (``q_len < kv_len``), sample
counts that are not powers of two, head dims that are not either, and more query blocks than one program
takes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.block_mass import sampled_rows, torch_sampled_shares
from sparseattn.kernels.estimation.triton_sampled_shares import ROWS, triton_sampled_shares


def qk(heads, kv_heads, q_len, kv_len, dim, seed, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, q_len, dim, generator=gen) * spread
    k = torch.randn(1, kv_heads, kv_len, dim, generator=gen)
    return q, k


def check(q, k, block, samples):
    rows = sampled_rows(q.shape[2], block, samples, q.device)
    got = triton_sampled_shares(q, k, rows, block)
    want = torch_sampled_shares(q, k, rows, block)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # Each sampled row's softmax sums to one over the blocks it reaches.
    torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:2]), rtol=1e-4, atol=1e-4)


@st.composite
def cases(draw):
    block = draw(st.sampled_from([32, 64]))
    kv_heads = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 3]))
    kv_len = draw(st.integers(1, 6 * block))
    q_len = draw(st.integers(1, kv_len))
    samples = draw(st.integers(1, 9))
    dim = draw(st.sampled_from([16, 24, 32]))
    return kv_heads * group, kv_heads, q_len, kv_len, dim, block, samples, draw(st.integers(0, 2**16))


@given(cases())
@settings(max_examples=30, deadline=None)
def test_kernel_equals_the_torch_shares(case):
    heads, kv_heads, q_len, kv_len, dim, block, samples, seed = case
    q, k = qk(heads, kv_heads, q_len, kv_len, dim, seed)
    check(q, k, block, samples)


def test_more_query_blocks_than_one_program_takes():
    """Three programs per head (4 samples: 16 query blocks per program), the last one partial."""
    block, samples = 32, 4
    q_len = block * (2 * ROWS // samples + 5) - 3
    q, k = qk(2, 1, q_len, q_len + 40, 16, seed=7)
    check(q, k, block, samples)


def test_bad_rows_name_the_argument():
    q, k = qk(1, 1, 100, 100, 16, seed=0)
    with pytest.raises(ValueError, match="rows: expected 4 query blocks"):
        triton_sampled_shares(q, k, sampled_rows(100, 64, 2, q.device), 32)
