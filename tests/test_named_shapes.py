"""Hand-written expectations for the named shapes and validation of every pattern's parameters."""

import dataclasses

import pytest
import torch

from sparseattn.lowering import lower
from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    Columns,
    Diagonals,
    LastQueries,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)


def kept(pattern, q_len, kv_len=None):
    """{(q_idx, k)} kept by head 0."""
    dense = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads)[0]
    return {tuple(x) for x in dense.nonzero().tolist()}


def test_triangle_by_hand():
    n = 12
    expected = {(q, k) for q in range(n) for k in range(q + 1) if k < 2 or q - k < 3 or q >= n - 2}
    assert kept(Triangle(sink=2, window=3, last=2), n) == expected


def test_triangle_chunked_prefill_aligns_bottom_right():
    # The last 4 queries of a 12-token prompt see exactly the last 4 rows of the full prompt.
    full = Triangle(sink=2, window=3, last=2).to_dense(12)[0]
    chunk = Triangle(sink=2, window=3, last=2).to_dense(4, 12)[0]
    assert torch.equal(chunk, full[8:])


def test_triangle_paper_defaults():
    assert Triangle() == Triangle(sink=8, window=512, last=128)


def test_streaming_by_hand():
    expected = {(q, k) for q in range(10) for k in range(q + 1) if k < 1 or q - k < 4}
    assert kept(Streaming(sink=1, window=4), 10) == expected


def test_ashape_by_hand():
    bs = 4
    expected = {(q, k) for q in range(16) for k in range(q + 1) if k < bs or 0 <= q // bs - k // bs < 2}
    assert kept(AShape(sink_blocks=1, local_blocks=2, block_size=bs), 16) == expected


def test_window_counts_self():
    assert kept(Window(1), 5) == {(i, i) for i in range(5)}


def test_last_queries_and_sink_are_not_causal_alone():
    assert (0, 4) in kept(LastQueries(5), 5)
    assert (0, 1) in kept(Sink(2), 5)


def test_per_head_columns_and_diagonals():
    cols = Columns(((0,), (1, 2)))
    assert cols.num_heads == 2
    dense = cols.to_dense(3, 4)
    assert dense[0, :, 0].all() and not dense[0, :, 1:].any()
    assert dense[1, :, 1:3].all() and not dense[1, :, 0].any()
    diag = Diagonals((0, -1))
    assert kept(diag, 3) == {(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)}


def test_index_sets_are_normalised():
    assert Columns((3, 1, 3)) == Columns((1, 3))
    assert Columns((3, 1, 3)).indices == (1, 3)
    assert Columns(torch.tensor([2, 0])) == Columns((0, 2))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Sink(-1), "size"),
        (lambda: Window(0), "size"),
        (lambda: LastQueries(1.5), "n"),
        (lambda: BlockBand(0, 64), "blocks"),
        (lambda: Triangle(window=0), "window"),
        (lambda: Streaming(sink=-2), "sink"),
        (lambda: AShape(block_size=0), "block_size"),
        (lambda: Columns((-1,)), "indices"),
        (lambda: Columns("abc"), "indices"),
        (lambda: Diagonals((0.5,)), "offsets"),
        (lambda: PerHead(()), "patterns"),
        (lambda: PerHead((Columns(((1,), (2,), (3,))), Causal())), r"patterns\[0\]"),
        (lambda: Columns(((1,), (2,))) & Columns(((1,), (2,), (3,))), "terms"),
    ],
)
def test_bad_parameters_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_head_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_heads"):
        Columns(((1,), (2,))).to_dense(4, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        lower(Columns(((1,), (2,))), 4, num_heads=3)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Triangle().sink = 3  # type: ignore[misc]
