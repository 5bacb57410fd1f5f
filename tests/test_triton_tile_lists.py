"""Layout lists built by row scans (Triton; the interpreter on CPU) equal the torch oracle of tile_grid."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.topk import PAD
from sparseattn.kernels.lowering.triton_tile_lists import triton_column_lists, triton_tile_lists
from sparseattn.lowering.tile_grid import causal_bitmaps, torch_column_lists, torch_tile_lists


def _rows(num: torch.Tensor, start: torch.Tensor, *flats: torch.Tensor) -> list[list[tuple[int, ...]]]:
    """Each row's entries, as tuples across the flat lists: storage beyond the rows is not compared."""
    out = []
    for n, s in zip(num.reshape(-1).tolist(), start.reshape(-1).tolist(), strict=True):
        out.append(list(zip(*(f[s : s + n].tolist() for f in flats), strict=True)))
    return out


@st.composite
def grids(draw):
    block = draw(st.sampled_from([32, 64]))
    kv_len = draw(st.integers(1, 9 * block))
    q_len = draw(st.integers(1, kv_len))
    heads = draw(st.integers(1, 3))
    qb, kb = -(-q_len // block), -(-kv_len // block)
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=heads * qb * kb, max_size=heads * qb * kb)))
    return keep.view(heads, qb, kb), q_len, kv_len, block


@given(grids(), st.data())
@settings(max_examples=40, deadline=None)
def test_tile_lists_equal_torch(case, data):
    keep, q_len, kv_len, block = case
    _, kind_ids = causal_bitmaps(block, q_len, kv_len)
    # Counted rows, or fixed slots under the tightest true bound on a row's kept tiles.
    row_bound = data.draw(st.sampled_from([None, max(int(keep.sum(-1).max()), 1)]), "row_bound")
    got = triton_tile_lists(keep, kind_ids, q_len=q_len, kv_len=kv_len, block=block, row_bound=row_bound)
    want = torch_tile_lists(keep, kind_ids, q_len=q_len, kv_len=kv_len, block=block, bound=keep.numel())
    assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3]), "counts differ"
    assert _rows(got[0], got[1], got[2]) == _rows(want[0], want[1], want[2]), "FULL lists differ"
    assert _rows(got[3], got[4], got[5], got[6]) == _rows(want[3], want[4], want[5], want[6]), "PARTIAL lists differ"


@given(grids(), st.data())
@settings(max_examples=40, deadline=None)
def test_column_lists_equal_torch(case, data):
    keep, q_len, kv_len, block = case
    heads = keep.shape[0]
    count = data.draw(st.integers(0, min(kv_len, 40)), "count")
    rows = []
    for _ in range(heads):
        chosen = sorted(data.draw(st.sets(st.integers(0, kv_len - 1), min_size=count, max_size=count)))
        pad = data.draw(st.sampled_from([PAD, kv_len]))  # padding: any value >= kv_len
        rows.append(chosen[: data.draw(st.integers(0, count))] + [pad] * count)
    keys = torch.tensor([r[:count] for r in rows], dtype=torch.long).view(heads, count)
    got = triton_column_lists(keys, keep, q_len=q_len, kv_len=kv_len, block=block)
    want = torch_column_lists(keys, keep, q_len=q_len, kv_len=kv_len, block=block)
    assert torch.equal(got[0], want[0]), "counts differ"
    assert _rows(*got) == _rows(*want), "gathered columns differ"
