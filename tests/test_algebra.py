"""Algebra laws, checked on the token truth of random patterns, and repr round-trips."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseattn.patterns as P
from sparseattn.patterns import And, Causal, Not, Or, Sink, Triangle, Window
from sparseattn.testing import lengths, patterns, per_head_patterns, primitives

SETTINGS = settings(max_examples=120, deadline=None)


def same(a, b, sizes):
    heads = a.num_heads or b.num_heads
    return torch.equal(a.to_dense(*sizes, num_heads=heads), b.to_dense(*sizes, num_heads=heads))


@SETTINGS
@given(a=patterns(max_leaves=3), b=patterns(max_leaves=3), sizes=lengths(max_len=64))
def test_de_morgan(a, b, sizes):
    assert same(~(a & b), ~a | ~b, sizes)
    assert same(~(a | b), ~a & ~b, sizes)


@SETTINGS
@given(a=patterns(max_leaves=3), b=patterns(max_leaves=3), sizes=lengths(max_len=64))
def test_absorption_commutativity(a, b, sizes):
    assert same(a & (a | b), a, sizes)
    assert same(a | (a & b), a, sizes)
    assert same(a & b, b & a, sizes)
    assert same(a | b, b | a, sizes)


@SETTINGS
@given(a=patterns(max_leaves=3), b=patterns(max_leaves=2), c=patterns(max_leaves=2), sizes=lengths(max_len=64))
def test_idempotence_double_negation_distributivity(a, b, c, sizes):
    assert same(a & a, a, sizes)
    assert same(a | a, a, sizes)
    assert same(~~a, a, sizes)
    assert same(a & (b | c), (a & b) | (a & c), sizes)


@SETTINGS
@given(p=st.one_of(patterns(), per_head_patterns()))
def test_repr_round_trips(p):
    rebuilt = eval(repr(p), vars(P))
    assert rebuilt == p
    assert hash(rebuilt) == hash(p)


def test_combinators_are_flat_data():
    expr = Causal() & Sink(4) & (Window(8) | Window(2) | Sink(1))
    assert isinstance(expr, And) and len(expr.terms) == 3
    assert isinstance(expr.terms[2], Or) and len(expr.terms[2].terms) == 3
    assert repr(~Sink(3)) == "~Sink(size=3)"
    assert isinstance(~Sink(3), Not)
    assert repr(Triangle().expand()) == "(Causal() & (Sink(size=8) | Window(size=512) | LastQueries(n=128)))"


@settings(max_examples=60, deadline=None)
@given(p=primitives(), sizes=lengths(max_len=64))
def test_mask_broadcasts_like_to_dense(p, sizes):
    q_len, kv_len = sizes
    dense = p.to_dense(q_len, kv_len)
    q = torch.randint(0, q_len, (20,))
    k = torch.randint(0, kv_len, (20,))
    ctx = P.MaskContext(q_len, kv_len)
    assert torch.equal(p.mask(torch.zeros(20, dtype=torch.long), q, k, ctx), dense[0, q, k])
