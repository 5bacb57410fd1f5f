"""``form="minference"`` lowers from its runs (`minference_layout`) to exactly its mask.

The oracle is the tile-by-tile path on the token truth (``lower(..., by_segments=False)``, which skips
the pattern's own layout): the same token mask, and every tile the fast layout computes is one the oracle
computes (it holds a kept pair) with the same class; the oracle's other tiles hold only gathered columns.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation import VerticalSlashIndices
from sparseattn.estimation.topk import PAD
from sparseattn.lowering import lower
from sparseattn.testing import check_layout_invariants


def _grid(layout) -> torch.Tensor:
    """int8 [H, QB, KB]: 0 EMPTY, 1 PARTIAL, 2 FULL."""
    grid, _ = layout._tile_grid()
    return grid[0].expand(layout.num_heads, -1, -1)


def check_against_oracle(pattern: VerticalSlashIndices, q_len: int, kv_len: int, block_size) -> None:
    fast = lower(pattern, q_len, kv_len, block_size=block_size)
    oracle = lower(pattern, q_len, kv_len, block_size=block_size, by_segments=False)
    check_layout_invariants(fast)
    truth = pattern.to_dense(q_len, kv_len)
    assert torch.equal(fast.to_dense()[0], truth), "the layout's mask is not the pattern's"
    assert torch.equal(oracle.to_dense()[0], truth)
    ours, theirs = _grid(fast), _grid(oracle)
    computed = ours > 0
    assert torch.equal(ours[computed], theirs[computed]), "a computed tile is empty or misclassified"
    # The oracle's tiles we skip hold gathered columns only: our mask without them is exact already.
    assert not bool(fast.col_indices is None and (theirs > 0).ne(computed).any())


@st.composite
def minference_cases(draw):
    kv_len = draw(st.integers(1, 200))
    q_len = draw(st.integers(1, kv_len))  # q_len < kv_len: a chunk at the end of the prompt
    heads = draw(st.integers(1, 3))
    row_block = draw(st.sampled_from([32, 64]))
    block_size = draw(st.sampled_from([(row_block, row_block), (32, 32), (64, 32), (16, 64), (128, 32), (32, 128)]))

    def rows(width: int, largest: int) -> torch.Tensor:
        # Per head: ascending distinct indices (some out of range, some heads empty), then PAD.
        sets = [sorted(draw(st.sets(st.integers(0, largest), max_size=width))) for _ in range(heads)]
        return torch.tensor([s + [PAD] * (width - len(s)) for s in sets], dtype=torch.long).view(heads, width)

    vertical = rows(draw(st.integers(0, 8)), kv_len + 3)
    # Large diagonals leave the first row blocks without a slash below their end: they keep nothing.
    slash = rows(draw(st.integers(0, 10)), kv_len + 3)
    pattern = VerticalSlashIndices(vertical, slash, form="minference", block_size=row_block)
    return pattern, q_len, kv_len, block_size


@settings(max_examples=30, deadline=None)
@given(minference_cases())
def test_minference_layout_equals_the_tile_by_tile_oracle(case):
    check_against_oracle(*case)


def test_row_block_without_slash_below_its_end_keeps_nothing():
    # Slash 70 lies below the ends of row blocks 2.. only (block 32): rows 0..63 keep nothing, even
    # their verticals; row blocks past it keep the vertical 5 below their last window.
    pattern = VerticalSlashIndices(torch.tensor([[5]]), torch.tensor([[70]]), form="minference", block_size=32)
    dense = lower(pattern, 160, block_size=(32, 32)).to_dense()[0, 0]
    assert not bool(dense[:64].any()) and bool(dense[64:, 5].all())
    check_against_oracle(pattern, 160, 160, (32, 32))
    check_against_oracle(pattern, 100, 160, (64, 32))


def test_verticals_kept_by_some_rows_of_a_tile_row_go_into_bitmaps():
    # Block 32, slash 20: row block 1 (positions 32..63) keeps [12, 44) and verticals below 44, row
    # block 2 keeps [44, 76). kv_len - q_len = 16 puts tile row 1 (positions 48..79) across both, so
    # the vertical 50 is dropped by its first rows and kept by its last: no gathered column can say
    # that, the PARTIAL tile of keys 32..63 must.
    pattern = VerticalSlashIndices(torch.tensor([[50]]), torch.tensor([[20]]), form="minference", block_size=32)
    check_against_oracle(pattern, 144, 160, (32, 32))
    layout = lower(pattern, 144, 160, block_size=(32, 32))
    assert int(_grid(layout)[0, 1, 1]) == 1
    _, _, qb, slot = layout.column_entries()
    assert 50 not in layout.col_indices[slot[qb == 1]].tolist()


def test_many_heads_and_dense_budgets():
    gen = torch.Generator().manual_seed(1)
    n, heads = 256, 3
    vertical = torch.stack([torch.randperm(n, generator=gen)[:40].sort().values for _ in range(heads)])
    slash = torch.stack([torch.randperm(n, generator=gen)[:60].sort().values for _ in range(heads)])
    pattern = VerticalSlashIndices(vertical, slash, form="minference", block_size=64)
    check_against_oracle(pattern, n, n, (64, 64))
    check_against_oracle(pattern, 150, n, (128, 64))
