"""The forward kernel reading K/V from a paged KV cache through a block table (CPU: Triton's interpreter).

Pages are shuffled, unused pages and the slots past ``kv_len`` hold NaN (a read of the wrong page or slot
shows), and the output must match the fp64 oracle and, bit for bit, the same kernel on contiguous K/V.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseattn.kernels.attention import launch
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.attention.paged import paged_config, paged_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Columns, LastQueries, Window
from sparseattn.testing.strategies import patterns
from sparseattn.testing.tolerance import assert_close_to_oracle


@pytest.fixture(autouse=True)
def interpreter_and_poisoned_outputs(monkeypatch):
    """Triton's interpreter; every output and scratch buffer NaN, so an unwritten row cannot pass."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    original = launch._new_outputs
    # The paged entry launches through launch.launch_forward, so this poisons its buffers too.
    monkeypatch.setattr(launch, "_new_outputs", lambda *a: tuple(t.fill_(math.nan) for t in original(*a)))


def paginate(
    k: torch.Tensor, v: torch.Tensor, page_size: int, gen: torch.Generator, spare: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K/V ``[B, Hkv, S, D]`` scattered into shuffled pages ``[num_pages, page_size, Hkv, D]`` (NaN where
    no key lives: spare pages, slots past S), and the int32 block table ``[B, pages + 1]`` (one unused
    column of garbage ids past the keys, which the kernel must not read)."""
    batch, kv_heads, kv_len, dim = k.shape
    pages = -(-kv_len // page_size)
    total = batch * pages + spare
    order = torch.randperm(total, generator=gen)[: batch * pages].view(batch, pages).to(torch.int32)
    k_pages = torch.full((total, page_size, kv_heads, dim), math.nan, dtype=k.dtype)
    v_pages = torch.full_like(k_pages, math.nan)
    for b in range(batch):
        for i in range(pages):
            rows = slice(i * page_size, min((i + 1) * page_size, kv_len))
            count = rows.stop - rows.start
            k_pages[order[b, i], :count] = k[b, :, rows].transpose(0, 1)
            v_pages[order[b, i], :count] = v[b, :, rows].transpose(0, 1)
    table = torch.cat([order, torch.full((batch, 1), 10**6, dtype=torch.int32)], 1)
    return k_pages, v_pages, table


def inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=gen).to(dtype)
    return q, k, v, gen


# Few examples under the interpreter; tests/gpu/test_paged_kv_gpu.py runs the compiled kernel at scale.
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_paged_kernel_matches_the_oracle_and_the_contiguous_kernel(data):
    batch = data.draw(st.sampled_from([1, 2]), "batch")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2, 4]), "group")
    kv_len = data.draw(st.integers(1, 300), "kv_len")
    q_len = data.draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)), "q_len")
    dim = data.draw(st.sampled_from([16, 32, 64]), "dim")
    dtype = data.draw(st.sampled_from([torch.float16, torch.float32]), "dtype")
    block = (data.draw(st.sampled_from([32, 64]), "block_m"), data.draw(st.sampled_from([32, 64]), "block_n"))
    page_size = block[1] * data.draw(st.sampled_from([1, 2, 4]), "blocks per page")
    pattern = data.draw(patterns(max_len=300), "pattern")
    layout = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads)
    config = replace(paged_config(layout, dim), full_runs=data.draw(st.booleans(), "runs"))
    if layout.num_heads == 1:
        config = replace(
            config, pack=data.draw(st.sampled_from([p for p in (1, 2, 4) if (heads // kv_heads) % p == 0]))
        )
    max_chunk = data.draw(st.sampled_from([None, 0, 1, 3]), "max_chunk")
    q, k, v, gen = inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype, data.draw(st.integers(0, 999)))
    k_pages, v_pages, table = paginate(k, v, page_size, gen)

    out, lse = paged_sparse_attention(q, k_pages, v_pages, table, layout, config=config, max_chunk=max_chunk)

    mask = layout.to_dense()
    assert_close_to_oracle(out, lse, q, k, v, mask)
    ref_out, ref_lse = triton_sparse_attention(q, k, v, layout, config=config, max_chunk=max_chunk)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_chunk_of_a_ragged_prompt_over_shuffled_pages_with_gathered_columns(dtype):
    """200 queries at the end of 437 keys (a ragged last page), GQA 4:1, a window, last rows and gathered
    key columns, 64-key pages of 32-key blocks, pages in the other layout [num_pages, Hkv, page_size, D]."""
    q, k, v, gen = inputs(2, 4, 1, 200, 437, 32, dtype, 1)
    pattern = Causal() & (Window(70) | LastQueries(30) | Columns((3, 50, 51, 120, 300, 333)))
    layout = lower(pattern, 200, 437, block_size=(32, 32))
    assert layout.col_num is not None
    k_pages, v_pages, table = paginate(k, v, 64, gen)
    head_major = [p.transpose(1, 2).contiguous().transpose(1, 2) for p in (k_pages, v_pages)]  # same values
    out, lse = paged_sparse_attention(q, *head_major, table, layout, max_chunk=2)
    assert_close_to_oracle(out, lse, q, k, v, layout.to_dense())


def test_refusals_name_the_argument():
    q, k, v, gen = inputs(1, 2, 1, 64, 100, 32, torch.float32, 2)
    layout = lower(Causal(), 64, 100, block_size=(32, 32))
    k_pages, v_pages, table = paginate(k, v, 32, gen)
    cases = [
        ((q, k_pages, v_pages, table, lower(Causal(), 64, 100, block_size=(32, 64))), {}, "k_pages: page_size 32"),
        ((q, k_pages, v_pages, table[:, :2], layout), {}, "block_table: kv_len=100 keys need 4 pages"),
        ((q, k_pages, v_pages, table.long(), layout), {}, "block_table: expected int32"),
        ((q, k_pages, v_pages, table - 100, layout), {}, r"block_table: page ids must lie in \[0, 7\)"),
        ((q, k_pages.half(), v_pages, table, layout), {}, "k_pages: expected"),
        ((q, k_pages, v_pages, table, layout), {"config": KernelConfig(tma=True)}, "config: tma"),
        (
            (q, k_pages, v_pages, table, layout),
            {"config": KernelConfig(num_warps=4, num_stages=2, tma=True, warp_specialized=True)},
            "config: warp_specialized does not read a paged KV cache",
        ),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            paged_sparse_attention(*args, **kwargs)
