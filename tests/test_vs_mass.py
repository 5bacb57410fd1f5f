"""`VerticalSlashMass` (line counts from the estimated attention mass) against its slow fp64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.attention import sparse_attention
from sparseattn.estimation import VerticalSlash, VerticalSlashMass
from sparseattn.estimation.topk import PAD
from sparseattn.lowering import lower
from sparseattn.testing.dynamic_reference import reference_vertical_slash_mass
from sparseattn.testing.tolerance import assert_close_to_oracle


def _qk(seed: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int = 16, peak: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    q = peak * torch.randn(1, heads, q_len, dim, generator=gen)
    return q, torch.randn(1, kv_heads, kv_len, dim, generator=gen)


def _rows(t: torch.Tensor) -> list[list[int]]:
    return [[v for v in row if v != PAD] for row in t.tolist()]


def _per_head(draw, heads: int, values):
    return draw(st.one_of(values, st.lists(values, min_size=heads, max_size=heads).map(tuple)))


@given(st.data())
@settings(max_examples=25, deadline=None)
def test_estimate_equals_slow_reference(data):
    kv_len = data.draw(st.integers(1, 160), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2]), "group")
    threshold = _per_head(data.draw, heads, st.floats(0.05, 0.99))
    max_vertical = _per_head(data.draw, heads, st.integers(1, 80))
    max_slash = _per_head(data.draw, heads, st.integers(1, 80))
    if isinstance(threshold, tuple) or isinstance(max_vertical, tuple) or isinstance(max_slash, tuple):
        # Per-head values must agree on the head count; make every per-head value a tuple.
        threshold, max_vertical, max_slash = (
            v if isinstance(v, tuple) else (v,) * heads for v in (threshold, max_vertical, max_slash)
        )
    settings_ = {
        "last_q": data.draw(st.integers(1, 24), "last_q"),
        "sink_columns": data.draw(st.integers(0, 8), "sink_columns"),
        "local_diagonals": data.draw(st.integers(0, 8), "local_diagonals"),
    }
    # Queries scaled up make peaked rows (few lines), down flat ones (many).
    q, k = _qk(
        data.draw(st.integers(0, 999)), heads, kv_heads, q_len, kv_len, peak=data.draw(st.sampled_from([0.3, 4.0]))
    )
    got = VerticalSlashMass(threshold, max_vertical, max_slash, **settings_).estimate(q, k)
    ref_v, ref_s = reference_vertical_slash_mass(q, k, threshold, max_vertical, max_slash, **settings_)
    assert _rows(got.vertical) == ref_v
    assert _rows(got.slash) == ref_s


def test_line_counts_follow_the_mass():
    """A head whose last rows look at one key and its own position keeps few lines; a flat head keeps up to
    its caps. Fixed budgets keep the same count on both."""
    kv_len, dim = 512, 32
    _, k = _qk(3, 2, 1, kv_len, kv_len, dim=dim)
    q = torch.zeros(1, 2, kv_len, dim)  # head 1: equal logits, a flat row
    q[0, 0] = 60.0 * k[0, 0, 300]  # head 0: every query points at key 300
    rule = VerticalSlashMass(0.9, max_vertical=200, max_slash=300, sink_columns=4, local_diagonals=4)
    est = rule.estimate(q, k)
    columns, diagonals = [len(r) for r in _rows(est.vertical)], [len(r) for r in _rows(est.slash)]
    assert 300 in _rows(est.vertical)[0]
    assert columns[0] <= 6 and columns[1] == 200  # head 0: key 300 and the forced sink
    assert diagonals[1] == 300  # the flat head's slashes take their cap
    fixed = VerticalSlash(200, 300, sink_columns=4, local_diagonals=4).estimate(q, k)
    assert [len(r) for r in _rows(fixed.vertical)] == [200, 200]
    ref_v, ref_s = reference_vertical_slash_mass(q, k, 0.9, 200, 300, sink_columns=4, local_diagonals=4)
    assert (_rows(est.vertical), _rows(est.slash)) == (ref_v, ref_s)


def test_forced_lines_stay_when_their_mass_already_reaches_the_threshold():
    q, k = _qk(4, 1, 1, 64, 64, peak=0.0)
    est = VerticalSlashMass(0.05, max_vertical=3, max_slash=5, sink_columns=10, local_diagonals=20).estimate(q, k)
    assert _rows(est.vertical) == [list(range(10))]  # the cap is raised to the forced count
    assert _rows(est.slash) == [list(range(20))]


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("form", ["block", "token"])
def test_backends_on_estimate_match_oracle(impl, form):
    q, k = _qk(7, 4, 2, 192, 256, dim=32, peak=3.0)
    v = torch.randn_like(k)
    rule = VerticalSlashMass((0.5, 0.8, 0.95, 0.3), max_vertical=40, max_slash=(120, 60, 101, 90), form=form)
    concrete = rule.estimate(q, k)
    layout = lower(concrete, 192, 256, block_size=64)
    out, lse = sparse_attention(q, k, v, layout, impl=impl, return_lse=True)
    assert_close_to_oracle(out, lse, q, k, v, concrete.to_dense(192, 256).unsqueeze(0))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: VerticalSlashMass(0.0), "threshold"),
        (lambda: VerticalSlashMass((0.5, 1.5)), r"threshold\[1\]"),
        (lambda: VerticalSlashMass(0.9, max_vertical=0), "max_vertical"),
        (lambda: VerticalSlashMass(0.9, max_slash=(10, 0)), r"max_slash\[1\]"),
        (lambda: VerticalSlashMass(0.9, max_vertical=(1, 2), max_slash=(1, 2, 3)), "budgets"),
        (lambda: VerticalSlashMass((0.5, 0.6), max_vertical=(1, 2, 3)), "threshold"),
        (lambda: VerticalSlashMass(0.9, last_q=0), "last_q"),
        (lambda: VerticalSlashMass(0.9, sink_columns=-1), "sink_columns"),
        (lambda: VerticalSlashMass(0.9, form="dense"), "form"),
        (lambda: VerticalSlashMass(0.9, block_size=48), "block_size"),
        (lambda: VerticalSlashMass(0.9, scale=0.0), "scale"),
        (lambda: VerticalSlashMass((0.5, 0.6)).estimate(*_qk(0, 3, 1, 64, 64)), "threshold"),
    ],
)
def test_invalid_parameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_repr_round_trips():
    for pattern in (
        VerticalSlashMass(0.9),
        VerticalSlashMass((0.8, 0.95), max_vertical=(100, 200), max_slash=2048, last_q=32, form="token", scale=0.125),
    ):
        assert eval(repr(pattern)) == pattern
