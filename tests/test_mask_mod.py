"""`Pattern.to_mask_mod`: the analytic FlexAttention predicate equals the token truth, and torch's
`create_block_mask` accepts it and keeps the same pairs."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask

from sparseattn.estimation import VerticalSlashIndices
from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    Columns,
    Diagonals,
    Documents,
    LastQueries,
    MaskContext,
    Pattern,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)
from sparseattn.testing.strategies import lengths, patterns, per_head_patterns


def heads_of(pattern: Pattern) -> int:
    return pattern.num_heads or 2


def evaluate(pattern: Pattern, q_len: int, kv_len: int) -> Tensor:
    """The mask_mod on broadcast aranges: bool [H, q_len, kv_len]."""
    heads = heads_of(pattern)
    h = torch.arange(heads).view(-1, 1, 1)
    q = torch.arange(q_len).view(1, -1, 1)
    k = torch.arange(kv_len).view(1, 1, -1)
    out = pattern.to_mask_mod(q_len, kv_len)(torch.zeros((), dtype=torch.long), h, q, k)
    assert out.dtype == torch.bool
    return out.expand(heads, q_len, kv_len)


def truth(pattern: Pattern, q_len: int, kv_len: int) -> Tensor:
    heads = heads_of(pattern)
    return pattern.to_dense(q_len, kv_len, num_heads=heads).expand(heads, q_len, kv_len)


def through_block_mask(pattern: Pattern, q_len: int, kv_len: int, block: int) -> Tensor:
    """What FlexAttention computes from ``create_block_mask``: FULL blocks whole, partial blocks through
    the mask_mod, nothing elsewhere. bool [H, q_len, kv_len]."""
    heads = heads_of(pattern)
    bm = create_block_mask(pattern.to_mask_mod(q_len, kv_len), 1, heads, q_len, kv_len, device="cpu", BLOCK_SIZE=block)
    qb, kb = -(-q_len // block), -(-kv_len // block)

    def grid(num: Tensor | None, idx: Tensor | None) -> Tensor:
        out = torch.zeros(heads, qb, kb, dtype=torch.bool)
        if num is None or idx is None:
            return out
        for h in range(heads):
            for r in range(qb):
                out[h, r, idx[0, h, r, : num[0, h, r]].long()] = True
        return out

    def tokens(blocks: Tensor) -> Tensor:
        return blocks.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :q_len, :kv_len]

    full = tokens(grid(bm.full_kv_num_blocks, bm.full_kv_indices))
    partial = tokens(grid(bm.kv_num_blocks, bm.kv_indices))
    return full | (partial & evaluate(pattern, q_len, kv_len))


@settings(max_examples=200, deadline=None)
@given(st.one_of(patterns(), per_head_patterns()), lengths())
def test_mask_mod_equals_dense(pattern, lens):
    q_len, kv_len = lens
    assert torch.equal(evaluate(pattern, q_len, kv_len), truth(pattern, q_len, kv_len))


@settings(max_examples=100, deadline=None)
@given(st.one_of(patterns(), per_head_patterns()), lengths(), st.data())
def test_mask_mod_ragged_chunk(pattern, lens, data):
    # A chunk strictly shorter than the keys: bottom-right alignment and LastQueries' kv_len matter.
    _, kv_len = lens
    q_len = data.draw(st.integers(1, max(1, kv_len - 1)))
    assert torch.equal(evaluate(pattern, q_len, kv_len), truth(pattern, q_len, kv_len))


@settings(max_examples=25, deadline=None)
@given(st.one_of(patterns(80, 4), per_head_patterns(80)), lengths(80), st.sampled_from([8, 16, 32]))
def test_create_block_mask_accepts_mask_mod(pattern, lens, block):
    q_len, kv_len = lens
    assert torch.equal(through_block_mask(pattern, q_len, kv_len, block), truth(pattern, q_len, kv_len))


@pytest.mark.parametrize(
    "pattern",
    [
        Triangle(8, 24, 16),
        Streaming(sink=4, window=30),
        AShape(sink_blocks=1, local_blocks=2, block_size=16),
        PerHead((Causal(), Window(9), Causal() & LastQueries(5), Causal() & BlockBand(2, 16))),
        # Repeated members, as the benchmarks' mixture cycles 4 kinds over 32 heads: one predicate per kind.
        PerHead(tuple([Causal(), Streaming(sink=4, window=30), Triangle(8, 24, 16)] * 3)),
        Causal() & Documents((13, 40, 41)),
        Causal() & (Columns(((0, 5), (3,))) | Diagonals(((0, 1), (0, 17)))),
        ~Sink(7) & Causal(),
    ],
    ids=repr,
)
def test_named_and_per_head_through_block_mask(pattern):
    for q_len, kv_len in ((96, 96), (37, 96), (1, 50)):
        assert torch.equal(through_block_mask(pattern, q_len, kv_len, 16), truth(pattern, q_len, kv_len))


def test_last_queries_counts_from_the_keys_end():
    # 4 queries ending a 10-key prompt sit at q_pos 6..9: LastQueries(3) keeps q_pos >= 7, rows 1..3.
    kept = evaluate(LastQueries(3), 4, 10)[0]
    assert kept.any(-1).tolist() == [False, True, True, True]
    assert bool(kept[1:].all())


@dataclass(frozen=True)
class OnlyMask(Pattern):
    """A user pattern that implements only ``mask``."""

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return (kv_idx % 3 == 0) & (q_idx >= 0)


@pytest.mark.parametrize(
    "pattern",
    [
        OnlyMask(),
        Causal() & OnlyMask(),
        PerHead((Causal(), OnlyMask())),
        VerticalSlashIndices(torch.tensor([[0]]), torch.tensor([[0]]), form="block"),
    ],
    ids=repr,
)
def test_without_a_predicate_points_to_the_layout_path(pattern):
    with pytest.raises(NotImplementedError, match=r"layout path.*to_flex"):
        pattern.to_mask_mod(8, 8)


def test_mask_mod_validates_lengths():
    with pytest.raises(ValueError, match="q_len <= kv_len"):
        Causal().to_mask_mod(9, 8)
