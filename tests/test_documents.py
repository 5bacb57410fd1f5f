"""`Documents`: packed sequences, exact against the dense truth and through every backend."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import Causal, Documents, Window, lower, sparse_attention
from sparseattn.testing import check_pattern, pattern_property_test
from sparseattn.testing.tolerance import assert_close_to_oracle

test_documents_alone = pattern_property_test(
    st.builds(Documents, st.lists(st.integers(1, 160), max_size=6)), exact=True
)
test_documents_with_causal_and_windows = pattern_property_test(
    st.builds(
        lambda starts, w: Causal() & Documents(starts) & Window(w),
        st.lists(st.integers(1, 160), max_size=6),
        st.integers(1, 160),
    )
)


def test_predicate_and_normalisation():
    docs = Documents([7, 3, 3])
    assert docs.starts == (3, 7) and eval(repr(docs)) == docs
    dense = docs.to_dense(10)[0]
    doc = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert torch.equal(dense, doc[:, None] == doc[None, :])
    assert torch.equal(Documents(()).to_dense(5), torch.ones(1, 5, 5, dtype=torch.bool))


@pytest.mark.parametrize("starts", [(0,), (-4,), ("3",), (True,)])
def test_rejects_bad_starts(starts):
    with pytest.raises(ValueError, match="starts"):
        Documents(starts)


def test_chunked_prefill_keeps_documents_aligned_to_positions():
    # The last 100 queries of a 1000-token prompt: query i sits at position i + 900.
    pattern = Causal() & Documents((300, 950))
    check_pattern(pattern, 100, 1000, (32, 64), exact=False)


@settings(max_examples=10, deadline=None)
@given(starts=st.lists(st.integers(1, 255), max_size=5))
def test_packed_causal_prefill_matches_the_oracle(starts):
    torch.manual_seed(0)
    pattern = Causal() & Documents(starts)
    q = torch.randn(1, 4, 256, 32, dtype=torch.float16)
    k = torch.randn(1, 2, 256, 32, dtype=torch.float16)
    v = torch.randn(1, 2, 256, 32, dtype=torch.float16)
    mask = pattern.to_dense(256).unsqueeze(0)
    for impl in ("reference", "flex", "triton"):
        out, lse = sparse_attention(q, k, v, pattern, impl=impl, return_lse=True)
        assert_close_to_oracle(out, lse, q, k, v, mask)


def test_many_documents_lower_exactly_with_few_bitmaps():
    # Documents of 50 to 300 tokens on 64-wide tiles: tiles holding one start and tiles holding several.
    starts = tuple(torch.cumsum(torch.randint(50, 300, (40,), generator=torch.Generator().manual_seed(0)), 0).tolist())
    pattern = Causal() & Documents(starts)
    layout = lower(pattern, 4096, block_size=(64, 64))
    assert torch.equal(layout.to_dense()[0, 0], pattern.to_dense(4096)[0])
    oracle = lower(pattern, 4096, block_size=(64, 64), by_segments=False)
    assert torch.equal(layout.kv_indices, oracle.kv_indices)
    # Boundary tiles with one start each share bitmaps by where the start falls, not one per tile.
    assert layout.tile_masks.shape[0] < layout.kv_indices.numel() // 2
