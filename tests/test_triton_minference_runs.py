"""MInference's merged slash windows walked by the Triton kernel (the interpreter on CPU) equal the torch
walk, their oracle, on random slash sets: padded heads, chunks starting past row block 0, runs that merge,
extend and stay apart."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.topk import PAD
from sparseattn.estimation.vs_indices import torch_minference_runs
from sparseattn.kernels.estimation.triton_minference_runs import BLOCK_G, triton_minference_runs


@st.composite
def slash_sets(draw):
    block = draw(st.sampled_from([4, 16, 64]))
    num_row_blocks = draw(st.integers(1, 12))
    kv_len = num_row_blocks * block
    heads = draw(st.integers(1, 3))
    count = draw(st.integers(0, 40))
    rows = []
    for _ in range(heads):
        # Near diagonals are dense in real slashes: draw from a narrow range half the time.
        top = draw(st.sampled_from([kv_len, min(kv_len, 3 * block)]))
        chosen = sorted(draw(st.sets(st.integers(0, top - 1), max_size=count)))
        rows.append(chosen + [PAD] * (count - len(chosen)))
    slash = torch.tensor(rows, dtype=torch.long).view(heads, count)
    first = draw(st.integers(0, num_row_blocks - 1))
    return slash, block, num_row_blocks, first


@given(slash_sets())
@settings(max_examples=60, deadline=None)
def test_triton_runs_equal_the_torch_walk(case):
    slash, block, num_row_blocks, first = case
    got = triton_minference_runs(slash, block, num_row_blocks, first, pad=PAD)
    want = torch_minference_runs(slash, block, num_row_blocks, first)
    for name, a, b in zip(("starts", "ends", "last_end"), got, want, strict=True):
        assert torch.equal(a, b), f"{name} differ:\n{a}\n{b}"


def test_more_row_blocks_than_one_program_holds():
    """Row blocks spread over several programs, with local diagonals that merge into one run per block."""
    num_row_blocks = BLOCK_G + 37
    slash = torch.cat([torch.arange(0, 100), torch.arange(500, 9000, 131)]).view(1, -1)
    got = triton_minference_runs(slash, 64, num_row_blocks, 5, pad=PAD)
    want = torch_minference_runs(slash, 64, num_row_blocks, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_rejects_slashes_that_are_not_int64_rows():
    with pytest.raises(ValueError, match="slash"):
        triton_minference_runs(torch.zeros(2, 3, dtype=torch.int32), 64, 4, pad=PAD)
