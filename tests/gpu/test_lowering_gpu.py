"""Lowering on the GPU: the row-segment path on CUDA gives the CPU's layout, and the per-tile oracle's."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.lowering import lower
from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    Columns,
    Documents,
    LastQueries,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)
from sparseattn.testing import check_layout_invariants, layouts_differ
from sparseattn.testing.strategies import patterns

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PATTERNS = {
    "causal": Causal(),
    "streaming": Streaming(128, 4096),
    "ashape": AShape(1, 32, 128),
    "triangle": Triangle(),
    "mixture": PerHead(
        tuple([Causal(), Streaming(128, 4096), AShape(1, 32, 128), Triangle()][h % 4] for h in range(32))
    ),
    "columns": Causal() & (Columns(tuple(range(0, 30000, 97))) | Window(1000)),
    "documents": Causal() & Documents(tuple(range(1000, 32768, 1000))),
    # 23 lines of straight-line code: the Triton lowering takes fewer rows per step to fit them.
    "long expression": Causal()
    & (Window(3) | Window(65) | Window(700) | Sink(1) | Sink(100) | LastQueries(900) | BlockBand(2, 48))
    & ~Window(2)
    & ~(Sink(50) & Window(5000)),
}


def _equal(a, b) -> None:
    differs = layouts_differ(a, b)
    assert differs is None, f"layouts differ in {differs}"


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("block", [(64, 64), (128, 128)])
def test_cuda_lowering_equals_cpu_and_tile_by_tile(name, block):
    pattern = PATTERNS[name]
    q_len, kv_len = 30000, 32768  # ragged tails, a chunk of queries at the end of the prompt
    on_gpu = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda")
    assert on_gpu.device.type == "cuda"
    _equal(on_gpu, lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads))
    _equal(
        on_gpu,
        lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda", by_segments=False),
    )


@settings(max_examples=80, deadline=None)
@given(
    members=st.lists(patterns(max_leaves=4), min_size=1, max_size=4),
    per_head=st.booleans(),
    kv_len=st.integers(1, 6000),
    chunk=st.integers(0, 6000),
    block=st.sampled_from([(32, 32), (64, 64), (128, 128), (16, 64), (128, 32)]),
)
def test_triton_lowering_equals_the_cpu_on_random_patterns(members, per_head, kv_len, chunk, block):
    """The CUDA default (interval program in Triton kernels, where the pattern compiles) against the
    CPU default (the patterns' own methods) on random expressions and per-head mixtures of them."""
    pattern = PerHead(tuple(members)) if per_head else members[0]
    q_len = max(1, kv_len - chunk)
    kwargs = dict(block_size=block, num_heads=pattern.num_heads)
    on_gpu = lower(pattern, q_len, kv_len, device="cuda", **kwargs)
    check_layout_invariants(on_gpu)
    _equal(on_gpu, lower(pattern, q_len, kv_len, **kwargs))


@pytest.mark.parametrize("name", ["triangle", "streaming", "ashape"])
def test_cuda_lowering_at_a_million_tokens(name):
    """The Triton lowering at the lengths the kernel benchmark's long rows reach and beyond (64-wide
    tiles: 16,384 key blocks per row), against the CPU's patterns' own methods."""
    pattern = PATTERNS[name]
    n, block = 1 << 20, (64, 64)
    on_gpu = lower(pattern, n, block_size=block, device="cuda")
    check_layout_invariants(on_gpu)
    _equal(on_gpu, lower(pattern, n, block_size=block))
