"""Row grouping by hash (`group_rows`) against `torch.unique(dim=0)`, its slow exact oracle."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.lowering.grouping import group_rows


def _same_partition(rows: torch.Tensor, inverse: torch.Tensor, first: torch.Tensor) -> None:
    _, oracle = torch.unique(rows, dim=0, return_inverse=True)
    groups = int(oracle.max()) + 1 if rows.shape[0] else 0
    assert first.numel() == groups
    assert sorted(set(inverse.tolist())) == list(range(groups))
    # Two rows share an id exactly when the oracle says they are equal.
    assert torch.equal(inverse[:, None] == inverse[None, :], oracle[:, None] == oracle[None, :])
    # first[g] is the first row of group g.
    for g in range(groups):
        assert int(first[g]) == int(torch.nonzero(inverse == g)[0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    k=st.integers(1, 6),
    spread=st.sampled_from([2, 5, 2**31, 2**62]),
    seed=st.integers(0, 2**31 - 1),
    collide=st.booleans(),
)
def test_group_rows_equals_unique(n: int, k: int, spread: int, seed: int, collide: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(-spread, spread, (n, k), generator=gen, dtype=torch.int64)
    # Zero multipliers hash every row alike: the exact fallback must then give the grouping.
    weights = torch.zeros(k, dtype=torch.int64) if collide else None
    inverse, first = group_rows(rows, weights)
    _same_partition(rows, inverse, first)


def test_group_rows_of_bitmap_words() -> None:
    """int32 words differing only in their top bit (the hardest case for a weighted sum) stay apart."""
    words = torch.zeros(4, 512, dtype=torch.int32)
    words[1, 7] = -(2**31)
    words[2, 300] = -(2**31)
    words[3] = words[1]
    inverse, first = group_rows(words.flatten(1))
    _same_partition(words.long(), inverse, first)
