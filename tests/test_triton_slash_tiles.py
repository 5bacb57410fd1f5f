"""The tiles some slash crosses, decided by the Triton kernel (the interpreter on CPU), equal the torch
computation, their oracle, and the token mask's own tiles: random slash sets, ragged lengths, queries
that are a chunk of the keys (``q_len < kv_len``), grids wider than one program's step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation.topk import PAD
from sparseattn.estimation.vs_indices import VerticalSlashIndices, _prefix
from sparseattn.kernels.estimation.triton_slash_tiles import BLOCK_K, BLOCK_Q, triton_slash_tiles
from sparseattn.lowering.tile_grid import index_table


def lines(slash_rows: list[list[int]], block: int) -> VerticalSlashIndices:
    count = max(1, *(len(r) for r in slash_rows))
    slash = torch.tensor([sorted(r) + [PAD] * (count - len(r)) for r in slash_rows], dtype=torch.long)
    vertical = torch.zeros(len(slash_rows), 1, dtype=torch.long)
    return VerticalSlashIndices(vertical, slash, form="block", block_size=block)


def kernel_grid(vs: VerticalSlashIndices, q_len: int, kv_len: int) -> torch.Tensor:
    return triton_slash_tiles(_prefix(index_table(vs.slash, kv_len)), q_len, kv_len, vs.block_size)


@st.composite
def cases(draw):
    block = draw(st.sampled_from([32, 64]))
    kv_len = draw(st.integers(1, 12 * block))
    q_len = draw(st.integers(1, kv_len))
    heads = draw(st.integers(1, 3))
    rows = [sorted(draw(st.sets(st.integers(0, kv_len - 1), max_size=20))) for _ in range(heads)]
    return rows, block, q_len, kv_len


@given(cases())
@settings(max_examples=60, deadline=None)
def test_kernel_equals_the_torch_grid(case):
    rows, block, q_len, kv_len = case
    vs = lines(rows, block)
    assert torch.equal(kernel_grid(vs, q_len, kv_len), vs.torch_tile_grid(q_len, kv_len))


def test_kernel_tiles_are_those_the_token_mask_touches():
    """A tile is kept exactly when the token-form mask (``q_pos - k`` a slash, any causality) has a pair
    in it: the block form's definition, on a grid spanning several programs in both directions."""
    block, kv_len = 32, 32 * (BLOCK_K + 5)
    q_len = 32 * (BLOCK_Q + 3) - 7
    rows = [[0, 1, 300, 1000, 4000], [17, 2048, kv_len - 1]]
    vs = lines(rows, block)
    offset = kv_len - q_len
    d = (torch.arange(q_len).view(-1, 1) + offset) - torch.arange(kv_len).view(1, -1)  # [q, k] diagonal
    for h, row in enumerate(rows):
        on_slash = torch.isin(d, torch.tensor(row))
        qb, kb = -(-q_len // block), -(-kv_len // block)
        padded = torch.zeros(qb * block, kb * block, dtype=torch.bool)
        padded[:q_len, :kv_len] = on_slash
        touched = padded.view(qb, block, kb, block).any(3).any(1)
        assert torch.equal(kernel_grid(vs, q_len, kv_len)[h], touched)


def test_rejects_a_prefix_of_the_wrong_length():
    with pytest.raises(ValueError, match="prefix"):
        triton_slash_tiles(torch.zeros(2, 10, dtype=torch.long), 64, 64, 32)
