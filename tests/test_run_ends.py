"""`run_ends` (where each run of consecutive FULL blocks ends) against a plain Python scan."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.kernels.planning.work_list import run_ends


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=40))
def test_run_ends_match_a_scan(blocks):
    n = len(blocks)
    starts = [p for p in range(n) if p == 0 or blocks[p] != blocks[p - 1] + 1]
    ends = run_ends(torch.tensor(blocks, dtype=torch.int32))
    assert ends.shape == (n + 1,)
    assert ends.tolist() == [min([s for s in starts if s >= p], default=n) for p in range(n + 1)]
