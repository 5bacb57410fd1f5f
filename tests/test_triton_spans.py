"""The kernel's interval plan (`span_plan`) against a brute-force reading of the layout."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.kernels.triton_spans import span_plan
from sparseattn.layout import BlockLayout, unpack_bits
from sparseattn.patterns import AShape, Causal, PerHead, Triangle


def _check(layout: BlockLayout) -> None:
    plan = span_plan(layout)
    bits = unpack_bits(layout.tile_masks, layout.block_n)
    for t in range(bits.shape[0]):
        for r in range(bits.shape[1]):
            cols = torch.nonzero(bits[t, r]).flatten().tolist()
            lo, hi = plan.spans[t, r].tolist()
            if cols and cols == list(range(cols[0], cols[-1] + 1)):
                assert (lo, hi) == (cols[0], cols[-1] + 1)
            elif not cols:
                assert (lo, hi) == (0, 0)
    single = [
        all(plan.spans[t, r, 1] - plan.spans[t, r, 0] == bits[t, r].sum() for r in range(bits.shape[1]))
        for t in range(bits.shape[0])
    ]
    for start, num, n_int in zip(
        layout.kv_start.flatten().tolist(),
        layout.kv_num_blocks.flatten().tolist(),
        plan.n_interval.flatten().tolist(),
        strict=True,
    ):
        before = sorted(
            zip(
                layout.kv_indices[start : start + num].tolist(),
                layout.kv_mask_ids[start : start + num].tolist(),
                strict=True,
            )
        )
        after = list(
            zip(
                plan.kv_indices[start : start + num].tolist(),
                plan.kv_mask_ids[start : start + num].tolist(),
                strict=True,
            )
        )
        assert sorted(after) == before  # the same tiles, each with its own bitmap
        assert n_int == sum(single[m] for _, m in after)
        assert all(single[m] for _, m in after[:n_int])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), density=st.floats(0.05, 0.9), block=st.sampled_from([32, 64]))
def test_span_plan_of_random_layouts(seed: int, density: float, block: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, 3, 150, 170, generator=gen) < density
    # Some tiles made of single runs per row, as causal diagonals are.
    mask[:, :, :, :64] |= torch.tril(torch.ones(150, 64, dtype=torch.bool), diagonal=-3)
    _check(BlockLayout.from_dense(mask, (block, block)))


def test_span_plan_of_lowered_patterns_with_shared_rows() -> None:
    mixed = PerHead(tuple([Causal(), Triangle(8, 100, 32), AShape(1, 2, 64)][h % 3] for h in range(6)))
    for pattern in (Triangle(8, 100, 32), mixed):
        _check(pattern.lower(700, 900, block_size=(64, 64), num_heads=pattern.num_heads))
