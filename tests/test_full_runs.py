"""`full_runs` (the FULL list cut into runs of consecutive blocks) against a plain Python scan."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.kernels.triton_schedule import full_runs


def runs_by_scan(blocks: list[int]) -> list[int]:
    return [p for p in range(len(blocks)) if p == 0 or blocks[p] != blocks[p - 1] + 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=40))
def test_runs_match_a_scan(blocks):
    run_at, run_of = full_runs(torch.tensor(blocks, dtype=torch.int32))
    starts = runs_by_scan(blocks)
    n = len(blocks)
    assert run_at.dtype == torch.int32 and run_at.shape == (n + 2,)
    # The starts in order, then the end in every slot left over.
    assert run_at.tolist() == starts + [n] * (n + 2 - len(starts))
    assert run_of.tolist() == [sum(s <= p for s in starts) - 1 for p in range(n)]
