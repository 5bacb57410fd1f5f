"""Hypothesis strategies for patterns, lengths and tilings.

Sizes stay small (a few hundred tokens) so that the dense truth is cheap and the suite stays fast on
two CPU cores; the structure (tails, q_len != kv_len, per-head sets, deep expressions) is what matters.
"""

from __future__ import annotations

from hypothesis import strategies as st

from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    Columns,
    Diagonals,
    Documents,
    Full,
    LastQueries,
    Pattern,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)

MAX_LEN = 160


@st.composite
def lengths(draw: st.DrawFn, max_len: int = MAX_LEN) -> tuple[int, int]:
    """``(q_len, kv_len)`` with ``1 <= q_len <= kv_len <= max_len``, often equal, often ragged."""
    kv_len = draw(st.integers(1, max_len))
    q_len = draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)))
    return q_len, kv_len


def block_sizes() -> st.SearchStrategy[tuple[int, int]]:
    """Tile shapes the lowering supports: block_n a multiple of 32."""
    return st.tuples(st.sampled_from([16, 32, 64]), st.sampled_from([32, 64]))


def _index_sets(low: int, high: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(low, high), max_size=8)


def primitives(max_len: int = MAX_LEN) -> st.SearchStrategy[Pattern]:
    """Every primitive with random parameters (head-independent); their tile classes are exact."""
    small = st.integers(0, max_len)
    return st.one_of(
        st.just(Full()),
        st.just(Causal()),
        st.builds(Sink, small),
        st.builds(Window, st.integers(1, max_len)),
        st.builds(LastQueries, small),
        st.builds(BlockBand, st.integers(1, 4), st.sampled_from([1, 3, 16, 32])),
        st.builds(Columns, _index_sets(0, max_len)),
        st.builds(Diagonals, _index_sets(-8, max_len)),
        st.builds(Documents, _index_sets(1, max_len)),
    )


def named_shapes(max_len: int = MAX_LEN) -> st.SearchStrategy[Pattern]:
    """The named shapes with random parameters; compositions, so their classes are sound, not exact."""
    return st.one_of(
        st.builds(Streaming, st.integers(0, 16), st.integers(1, max_len)),
        st.builds(AShape, st.integers(0, 3), st.integers(1, 3), st.sampled_from([8, 16, 32])),
        st.builds(Triangle, st.integers(0, 16), st.integers(1, max_len), st.integers(0, max_len)),
    )


def patterns(max_len: int = MAX_LEN, max_leaves: int = 6) -> st.SearchStrategy[Pattern]:
    """Random expression trees over `primitives` built with ``&``, ``|`` and ``~``."""
    return st.recursive(
        st.one_of(primitives(max_len), named_shapes(max_len)),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: t[0] & t[1]),
            st.tuples(inner, inner).map(lambda t: t[0] | t[1]),
            inner.map(lambda p: ~p),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def per_head_patterns(draw: st.DrawFn, max_len: int = MAX_LEN, max_heads: int = 4) -> Pattern:
    """A pattern that depends on the head: `PerHead` of random trees, or per-head index sets."""
    heads = draw(st.integers(1, max_heads))
    kind = draw(st.sampled_from(["per_head", "columns", "diagonals"]))
    if kind == "per_head":
        return PerHead(tuple(draw(st.lists(patterns(max_len, 3), min_size=heads, max_size=heads))))
    sets = draw(st.lists(_index_sets(0, max_len), min_size=heads, max_size=heads))
    index_sets = tuple(tuple(s) for s in sets)
    lines = Columns(index_sets) if kind == "columns" else Diagonals(index_sets)
    return draw(st.sampled_from([Causal() & lines, (Causal() & lines) | Window(draw(st.integers(1, 40))), lines]))
