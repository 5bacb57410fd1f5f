"""Lowering by row segments against its oracle, the per-tile path, and the row breaks it rests on."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import (
    AShape,
    Causal,
    Columns,
    Diagonals,
    MaskContext,
    Pattern,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)
from sparseattn.testing import check_layout_invariants, check_row_breaks, layouts_differ
from sparseattn.testing.strategies import block_sizes, lengths, patterns, per_head_patterns


@settings(max_examples=120, deadline=None)
@given(pattern=st.one_of(patterns(), per_head_patterns()), sizes=lengths(), block_size=block_sizes())
def test_tile_class_is_constant_between_row_breaks(pattern, sizes, block_size):
    check_row_breaks(pattern, *sizes, block_size)


@pytest.mark.parametrize(
    "pattern",
    [
        Causal(),
        Streaming(4, 300),
        AShape(1, 3, 64),
        Triangle(),
        PerHead((Causal(), Window(9))),
        Columns((3, 4, 5, 900)),
    ],
    ids=repr,
)
def test_built_in_shapes_take_the_segment_path(pattern):
    assert pattern.row_breaks(MaskContext(4096, 4096, pattern.num_heads or 1, 64, 64)) is not None


def test_scattered_index_sets_fall_back_before_building_their_breaks():
    # 2 * 3000 cuts per row against 64 kv blocks: [1, 64, 12000] breaks would be pure waste.
    scattered = Diagonals(tuple(range(0, 12000, 2)))
    assert scattered.row_breaks(MaskContext(4096, 4096, 1, 64, 64)) is None
    layout = lower(Causal() & scattered, 600, 700, block_size=(64, 64))
    assert torch.equal(layout.to_dense()[0, 0], (Causal() & scattered).to_dense(600, 700)[0])


def test_row_breaks_check_catches_a_missing_break():
    class Lying(Window):
        def row_breaks(self, ctx):
            return super().row_breaks(ctx)[..., :1]  # drops the window's far edge

    with pytest.raises(AssertionError, match="class changes inside a run"):
        check_row_breaks(Lying(200), 1024, 1024, (64, 64))


def _same_layout(a: BlockLayout, b: BlockLayout) -> None:
    differs = layouts_differ(a, b)
    assert differs is None, f"layouts differ in {differs}"


@settings(max_examples=120, deadline=None)
@given(pattern=st.one_of(patterns(), per_head_patterns()), sizes=lengths(), block_size=block_sizes())
def test_segments_equal_tile_by_tile(pattern, sizes, block_size):
    kwargs = dict(block_size=block_size, num_heads=pattern.num_heads)
    fast = lower(pattern, *sizes, **kwargs)
    check_layout_invariants(fast)
    _same_layout(fast, lower(pattern, *sizes, by_segments=False, **kwargs))
    truth = pattern.to_dense(*sizes, num_heads=pattern.num_heads)
    assert torch.equal(fast.to_dense()[0].expand_as(truth), truth)


@pytest.mark.parametrize(
    "pattern",
    [
        Causal(),
        Streaming(sink=4, window=300),
        AShape(sink_blocks=1, local_blocks=3, block_size=64),
        Triangle(sink=8, window=200, last=50),
        Causal() & (Columns((3, 4, 5, 700, 1500)) | Window(100)),  # gathered columns
        Causal() & ~Causal(),  # Kleene calls the diagonal PARTIAL; it is empty
        Causal() | (Window(64) & ~Window(64)),
    ],
    ids=repr,
)
def test_structured_patterns_at_a_few_thousand_tokens(pattern):
    for q_len, kv_len in ((2048, 2048), (1000, 2500)):
        fast = lower(pattern, q_len, kv_len, block_size=(64, 64))
        _same_layout(fast, lower(pattern, q_len, kv_len, block_size=(64, 64), by_segments=False))


def test_heads_with_one_pattern_share_rows():
    mixed = PerHead((Causal(), Sink(16) & Causal(), Causal(), Sink(16) & Causal()))
    layout = lower(mixed, 512, block_size=(64, 64))
    assert layout.num_heads == 4
    assert layout.full_kv_indices.numel() == sum(
        lower(p, 512, block_size=(64, 64)).full_kv_indices.numel() for p in (Causal(), Sink(16) & Causal())
    )
    assert torch.equal(layout.full_kv_start[0, 0], layout.full_kv_start[0, 2])
    _same_layout(layout, lower(mixed, 512, block_size=(64, 64), by_segments=False))


def test_user_pattern_without_breaks_takes_the_tile_path():
    class Checker(Pattern):
        def mask(self, h, q_idx, kv_idx, ctx):
            return ((q_idx // 7 + kv_idx // 5) % 2 == 0) & (kv_idx <= q_idx + ctx.offset)

    pattern = Checker()
    assert pattern.row_breaks(MaskContext(64, 64)) is None
    layout = lower(pattern, 150, 200, block_size=(32, 32))
    assert torch.equal(layout.to_dense()[0, 0], pattern.to_dense(150, 200)[0])


def test_select_heads_rejects_bad_ids():
    layout = lower(PerHead((Causal(), Window(8))), 64, block_size=(32, 32))
    with pytest.raises(ValueError, match="heads: expected"):
        layout.select_heads([0, 2])
    with pytest.raises(ValueError, match="heads: expected"):
        layout.select_heads([])


def test_recurring_terms_are_evaluated_once_per_tile_set():
    calls = []

    @dataclass(frozen=True)
    class CountedCausal(Causal):
        def classify(self, tiles):
            calls.append(len(tiles))
            return super().classify(tiles)

    pattern = (CountedCausal() & Window(100)) | (CountedCausal() & Sink(8))
    layout = lower(pattern, 1024, block_size=(64, 64))
    assert torch.equal(layout.to_dense()[0, 0], pattern.to_dense(1024)[0])
    assert len(calls) == 1  # the probe tiles; the two equal terms share the evaluation


def test_unhashable_user_patterns_are_evaluated_every_time():
    @dataclass(frozen=True)
    class Listed(Pattern):
        offsets: list  # a list field: the pattern cannot be hashed

        def mask(self, h, q_idx, kv_idx, ctx):
            return (kv_idx <= q_idx + ctx.offset) & ((q_idx + ctx.offset - kv_idx) < self.offsets[0])

    pattern = Listed([40]) | (Causal() & Sink(4))
    layout = lower(pattern, 300, 300, block_size=(32, 32))
    assert torch.equal(layout.to_dense()[0, 0], pattern.to_dense(300)[0])
