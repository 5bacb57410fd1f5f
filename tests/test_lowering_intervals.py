"""`IntervalProgram` against the pattern it is compiled from: same classes and bits, valid breaks,
sound keys, and the same layout as the per-tile oracle and as the segment path on the patterns' own
methods."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.lowering.intervals import IntervalProgram, compile_intervals
from sparseattn.patterns import (
    AShape,
    Causal,
    Columns,
    Documents,
    MaskContext,
    Pattern,
    PerHead,
    Sink,
    Streaming,
    Tiles,
    Triangle,
    Window,
)
from sparseattn.patterns.tiles import tile_bits
from sparseattn.testing import check_layout_invariants, check_row_breaks, layouts_differ
from sparseattn.testing.strategies import block_sizes, lengths, patterns

MEMBERS = st.lists(patterns(max_leaves=4), min_size=1, max_size=3)


def _program(pattern: Pattern, ctx: MaskContext) -> IntervalProgram | None:
    program = compile_intervals(pattern, ctx)
    assert program is None or program.num_heads == pattern.num_heads
    return program


@st.composite
def compiled(draw: st.DrawFn) -> tuple[Pattern, IntervalProgram, MaskContext]:
    """A random expression or `PerHead` of them that compiles, with a context for it."""
    members = draw(MEMBERS)
    pattern = PerHead(tuple(members)) if draw(st.booleans()) else members[0]
    q_len, kv_len = draw(lengths())
    ctx = MaskContext(q_len, kv_len, pattern.num_heads or 1, *draw(block_sizes()))
    program = _program(pattern, ctx)
    if program is None:  # index sets or documents somewhere in it
        from hypothesis import reject

        reject()
    return pattern, program, ctx


@settings(max_examples=150, deadline=None)
@given(case=compiled())
def test_program_classes_and_bits_are_the_source_s(case):
    pattern, program, ctx = case
    tiles = Tiles.grid(ctx, pattern.num_heads or 1)
    assert torch.equal(program.classify(tiles), pattern.classify(tiles))
    rows, cols = torch.arange(ctx.block_m), torch.arange(ctx.block_n)
    got, _ = tile_bits(program, tiles, rows, cols)
    want, _ = tile_bits(pattern, tiles, rows, cols)
    assert torch.equal(got, want)


@settings(max_examples=150, deadline=None)
@given(case=compiled())
def test_program_breaks_hold_and_keys_are_sound(case):
    pattern, program, ctx = case
    check_row_breaks(program, ctx.q_len, ctx.kv_len, (ctx.block_m, ctx.block_n))
    # Tiles with equal keys (and extents) have equal bits.
    tiles = Tiles.grid(ctx, pattern.num_heads or 1)
    extents = torch.stack([tiles.q_last - tiles.q_start, tiles.k_last - tiles.k_start], dim=1)
    keys = torch.cat([program.tile_key(tiles), extents], dim=1)
    bits, _ = tile_bits(pattern, tiles, torch.arange(ctx.block_m), torch.arange(ctx.block_n))
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), len(tiles)).scatter_reduce(0, group, torch.arange(len(tiles)), "amin")
    assert torch.equal(bits, bits[first[group]])


def _same_layout(a: BlockLayout, b: BlockLayout) -> None:
    differs = layouts_differ(a, b)
    assert differs is None, f"layouts differ in {differs}"


@settings(max_examples=120, deadline=None)
@given(members=MEMBERS, sizes=lengths(), block_size=block_sizes(), per_head=st.booleans())
def test_program_lowering_equals_both_oracles(members, sizes, block_size, per_head):
    pattern = PerHead(tuple(members)) if per_head else members[0]
    kwargs = dict(block_size=block_size, num_heads=pattern.num_heads)
    fast = lower(pattern, *sizes, intervals=True, **kwargs)
    check_layout_invariants(fast)
    _same_layout(fast, lower(pattern, *sizes, intervals=False, **kwargs))
    _same_layout(fast, lower(pattern, *sizes, by_segments=False, **kwargs))


@pytest.mark.parametrize(
    "pattern",
    [
        Causal(),
        Triangle(),
        Streaming(4, 64) | ~Window(9),
        PerHead((Causal(), Streaming(4, 300), AShape(1, 3, 64), Triangle())),
    ],
    ids=repr,
)
def test_named_shapes_compile(pattern):
    assert isinstance(compile_intervals(pattern, MaskContext(512, 512, pattern.num_heads or 1)), IntervalProgram)


def test_the_program_is_the_default_on_gpus_only(monkeypatch):
    from sparseattn import lowering

    compiled_for = []

    def recording(pattern, ctx):
        compiled_for.append(ctx.device.type)
        return compile_intervals(pattern, ctx)

    monkeypatch.setattr(lowering, "compile_intervals", recording)
    lower(Triangle(), 256, block_size=(32, 32))
    assert compiled_for == []
    lower(Triangle(), 256, block_size=(32, 32), intervals=True)
    assert compiled_for == ["cpu"]


def test_atoms_shared_by_terms_are_evaluated_once():
    mixture = PerHead((Causal(), Streaming(8, 512), Triangle(8, 512, 64)))
    program = compile_intervals(mixture, MaskContext(512, 512, 3))
    assert program is not None
    # Causal, Sink(8) and Window(512) recur across the members; LastQueries(64) is the one addition.
    assert len(program.atoms) == 4


class _Shifted(Window):
    """A user subclass with its own truth: the program must not take it for a `Window`."""

    def mask(self, h, q_idx, kv_idx, ctx):
        return super().mask(h, q_idx, kv_idx - 1, ctx)


@pytest.mark.parametrize(
    "pattern",
    [
        Causal() & Columns((3, 9)),
        Documents((40, 100)),
        _Shifted(8),
        PerHead((Causal(), Causal() & Columns(((1,), (2,))))),
        Sink(4) | _Shifted(3),
    ],
    ids=repr,
)
def test_patterns_it_does_not_know_term_for_term_stay_on_their_own_methods(pattern):
    assert compile_intervals(pattern, MaskContext(256, 256, pattern.num_heads or 1)) is None
    layout = lower(pattern, 200, 256, block_size=(32, 32), num_heads=pattern.num_heads, intervals=True)
    truth = pattern.to_dense(200, 256, num_heads=pattern.num_heads)
    assert torch.equal(layout.to_dense()[0].expand_as(truth), truth)
