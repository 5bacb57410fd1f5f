"""The Triton lowering of a compiled program (`by_program.py`) against the torch path on the same
program and against the per-tile oracle; its kernels one by one against the program's torch answers.
On CPU the kernels run in Triton's interpreter."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.kernels.lowering.triton_interval_program import AND, ATOM, NOT, OR, classify_rows, partial_bits
from sparseattn.layout import pack_bits
from sparseattn.lowering import lower
from sparseattn.lowering.by_program import encode, lower_by_program
from sparseattn.lowering.intervals import compile_intervals
from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    LastQueries,
    MaskContext,
    PerHead,
    Sink,
    Streaming,
    Tiles,
    Triangle,
    Window,
)
from sparseattn.patterns.tiles import FULL, PARTIAL, expand_runs, tile_bits
from sparseattn.testing import check_layout_invariants, layouts_differ
from sparseattn.testing.strategies import block_sizes, lengths, patterns

MEMBERS = st.lists(patterns(max_leaves=4), min_size=1, max_size=3)

# The interpreter spends about 2 s per lowering (mostly in `tl.sort`), so the random properties take
# few examples here; tests/gpu/test_lowering_gpu.py runs the same comparison on 80 examples compiled.


@settings(max_examples=12, deadline=None)
@given(members=MEMBERS, sizes=lengths(), block_size=block_sizes(), per_head=st.booleans())
def test_triton_lowering_equals_the_torch_program_and_the_oracle(members, sizes, block_size, per_head):
    pattern = PerHead(tuple(members)) if per_head else members[0]
    kwargs = dict(block_size=block_size, num_heads=pattern.num_heads)
    fast = lower(pattern, *sizes, intervals=True, triton=True, **kwargs)
    check_layout_invariants(fast)
    for other in (
        lower(pattern, *sizes, intervals=True, triton=False, **kwargs),
        lower(pattern, *sizes, by_segments=False, **kwargs),
    ):
        differs = layouts_differ(fast, other)
        assert differs is None, f"layouts differ in {differs}"


NAMED = [
    Causal(),
    Triangle(8, 64, 32),
    Causal() & ~Window(9),
    Causal() & (BlockBand(2, 48) | LastQueries(20)),
    PerHead((Causal(), Streaming(4, 300), AShape(1, 3, 64), Triangle())),
]


SIZES = [(256, 256), (200, 333), (1, 77)]
BLOCK_SIZES = [(32, 32), (16, 64), (128, 96)]


# Each pattern meets every length and every tile shape, in a Latin square rather than the full product.
@pytest.mark.parametrize(
    "pattern, sizes, block_size",
    [(p, SIZES[j], BLOCK_SIZES[(i + j) % 3]) for i, p in enumerate(NAMED) for j in range(3)],
    ids=repr,
)
def test_named_patterns_take_the_triton_path(pattern, sizes, block_size):
    heads = pattern.num_heads
    ctx = MaskContext(*sizes, heads or 1, *block_size)
    program = compile_intervals(pattern, ctx)
    assert program is not None
    layout = lower_by_program(program, ctx, heads)
    check_layout_invariants(layout)
    want = lower(pattern, *sizes, block_size=block_size, num_heads=heads, intervals=True, triton=False)
    assert layouts_differ(layout, want) is None


@pytest.mark.parametrize(
    "pattern",
    # Diagonal tiles PARTIAL by Kleene logic: EMPTY by their bits, then FULL by them.
    [Causal() & ~Causal(), (Causal() & Window(100)) | ~Window(9)],
    ids=repr,
)
def test_tiles_kleene_logic_misclassifies_are_dropped_or_promoted(pattern):
    ctx = MaskContext(200, 256, 1, 32, 32)
    program = compile_intervals(pattern, ctx)
    assert program is not None
    layout = lower_by_program(program, ctx, None)
    check_layout_invariants(layout)
    assert layouts_differ(layout, lower(pattern, 200, 256, block_size=(32, 32), by_segments=False)) is None


@settings(max_examples=10, deadline=None)
@given(members=MEMBERS, sizes=lengths(), block_size=block_sizes())
def test_kernels_answer_as_the_program_does(members, sizes, block_size):
    pattern = PerHead(tuple(members))
    ctx = MaskContext(*sizes, len(members), *block_size)
    program = compile_intervals(pattern, ctx)
    if program is None:
        return
    code, spans, lines = encode(program)
    shape = dict(q_len=ctx.q_len, kv_len=ctx.kv_len, block_size=block_size, lines=lines)
    qb, kb = ctx.num_q_blocks, ctx.num_kv_blocks
    lo, counts, nums = classify_rows(code, spans, **shape)
    # Runs tile each row in order, and each run's class is every one of its tiles' class.
    hi = torch.cat([lo[:, 1:], torch.full_like(lo[:, :1], kb)], dim=1)
    assert bool((lo[:, 0] == 0).all()) and bool((hi >= lo).all())
    length = hi - lo
    row, run = torch.nonzero(length > 0, as_tuple=True)
    tile_row, kv_block = expand_runs(lo[row, run], length[row, run])
    tiles = Tiles(ctx, row[tile_row] // qb, row[tile_row] % qb, kv_block)
    cls = program.classify(tiles)
    assert torch.equal(counts[0][row, run], torch.zeros_like(run).index_add_(0, tile_row, (cls == FULL).long()))
    assert torch.equal(counts[1][row, run], torch.zeros_like(run).index_add_(0, tile_row, (cls == PARTIAL).long()))
    assert torch.equal(
        counts[0][row, run] + counts[1][row, run], length[row, run] * (counts[0][row, run] + counts[1][row, run] > 0)
    )
    assert torch.equal(nums, counts.sum(2))
    tiles = Tiles.grid(ctx, len(members))
    words, true_class = partial_bits(code, spans, tiles.head * qb + tiles.q_block, tiles.kv_block, **shape)
    bits, inside = tile_bits(pattern, tiles, torch.arange(ctx.block_m), torch.arange(ctx.block_n))
    assert torch.equal(words, pack_bits(bits))
    kept = bits.sum((1, 2))
    assert torch.equal(true_class.long(), (kept > 0).long() + (kept == inside.sum((1, 2))))


def test_the_kernels_stay_off_the_cpu_unless_forced(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the kernels would now refuse a CPU device
    layout = lower(Triangle(), 256, block_size=(32, 32), intervals=True)  # CPU default: the torch program
    want = lower(Triangle(), 256, block_size=(32, 32), intervals=True, triton=False)
    assert layouts_differ(layout, want) is None
    with pytest.raises(ValueError, match="triton: the lowering kernels need a CUDA device"):
        lower(Sink(4), 64, block_size=(32, 32), triton=True)


def test_encoding_runs_each_member_on_its_own_block_of_lines():
    pattern = PerHead((Causal(), Causal() & ~Causal(), Sink(4) | (Sink(4) & Window(8))))
    program = compile_intervals(pattern, MaskContext(64, 64, 3, 32, 32))
    assert program is not None
    code, spans, lines = encode(program)
    # Causal; then Causal (once), its negation and the And; then Sink, Window, And, Or.
    assert spans.tolist() == [[0, 1], [1, 3], [4, 4]] and lines == 4
    assert code[:, 0].tolist() == [ATOM, ATOM, NOT, AND, ATOM, ATOM, AND, OR]
    assert code[3, 5:].tolist() == [0, 1] and code[7, 5:].tolist() == [0, 2]  # operands within the block


def test_a_long_expression_gives_the_same_layout():
    """Its register files take fewer rows per step (ROWS_PER_PROGRAM and BITMAP_ROWS are cut to fit)."""
    terms = [Window(w) for w in (3, 5, 9, 17, 33)] + [Sink(s) for s in (1, 2, 4)] + [LastQueries(9), BlockBand(1, 16)]
    union = terms[0]
    for term in terms[1:]:
        union = union | term
    pattern = Causal() & union & ~Window(2)
    ctx = MaskContext(200, 256, 1, 16, 64)
    program = compile_intervals(pattern, ctx)
    assert program is not None and encode(program)[2] > 16  # a register file past the default rows
    layout = lower_by_program(program, ctx, None)
    check_layout_invariants(layout)
    want = lower(pattern, 200, 256, block_size=(16, 64), intervals=True, triton=False)
    assert layouts_differ(layout, want) is None
