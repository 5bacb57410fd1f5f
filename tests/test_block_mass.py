"""`BlockMass` (adaptive block budget) against its slow reference; its estimate through every backend."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.attention import sparse_attention
from sparseattn.estimation import BlockMass, BlockTopK
from sparseattn.lowering import lower
from sparseattn.testing.dynamic_reference import reference_block_mass
from sparseattn.testing.tolerance import assert_close_to_oracle


def _qk(seed: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int = 16, peak: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    q = peak * torch.randn(1, heads, q_len, dim, generator=gen)
    return q, torch.randn(1, kv_heads, kv_len, dim, generator=gen)


def _rows(tiles: torch.Tensor) -> list[list[list[int]]]:
    return [[row.nonzero().view(-1).tolist() for row in head] for head in tiles]


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_estimate_equals_slow_reference(data):
    block = data.draw(st.sampled_from([32, 64]), "block")
    kv_len = data.draw(st.integers(1, 8 * block), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2]), "group")
    threshold = data.draw(
        st.one_of(
            st.floats(0.05, 1.0),
            st.lists(st.floats(0.05, 1.0), min_size=heads, max_size=heads).map(tuple),
        ),
        "threshold",
    )
    # Queries scaled up make peaked rows (few blocks), down flat ones (many).
    q, k = _qk(
        data.draw(st.integers(0, 999)), heads, kv_heads, q_len, kv_len, peak=data.draw(st.sampled_from([0.3, 3.0]))
    )
    got = BlockMass(threshold, block_size=block).estimate(q, k)
    assert _rows(got.tiles) == reference_block_mass(q, k, threshold, block_size=block)


def test_budget_adapts_to_the_rows():
    """A peaked head keeps fewer blocks than a flat one at the same threshold; top-k keeps the same count."""
    _, k = _qk(3, 2, 1, 1024, 1024, dim=32)
    q = torch.zeros(1, 2, 1024, 32)  # head 1: equal scores everywhere, a flat row
    q[0, 0] = 400.0 * k[0, 0, 5 * 64 : 6 * 64].mean(0)  # head 0: every query points at key block 5
    kept = BlockMass(0.9, block_size=64).estimate(q, k).tiles.sum(-1)[:, -1]  # last query block, per head
    assert kept.tolist() == [3, 15]  # sink, own block and block 5; 90% of 16 equal shares
    assert (BlockTopK(4, block_size=64).estimate(q, k).tiles.sum(-1)[:, -1] == 4).all()


def test_threshold_one_keeps_every_reachable_block():
    q, k = _qk(5, 2, 2, 300, 400)
    tiles = BlockMass(1.0, block_size=32).estimate(q, k)
    assert torch.equal(tiles.to_dense(300, 400), torch.ones(2, 300, 400).tril(100).bool())


@pytest.mark.parametrize("estimator", ["pooled", "sampled"])
@pytest.mark.parametrize("impl", ["triton", "flex", "reference"])
def test_backends_on_estimate_match_oracle(impl, estimator):
    q, k = _qk(7, 4, 2, 192, 256, dim=32)
    v = torch.randn_like(k)
    concrete = BlockMass((0.5, 0.8, 0.95, 0.3), block_size=64, estimator=estimator).estimate(q, k)
    layout = lower(concrete, 192, 256)
    out, lse = sparse_attention(q, k, v, layout, impl=impl, return_lse=True)
    assert_close_to_oracle(out, lse, q, k, v, concrete.to_dense(192, 256).unsqueeze(0))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BlockMass(0.0), "threshold"),
        (lambda: BlockMass(1.5), "threshold"),
        (lambda: BlockMass((0.5, 2.0)), r"threshold\[1\]"),
        (lambda: BlockMass(0.5, block_size=48), "block_size"),
        (lambda: BlockMass(0.5, estimator="mean"), "estimator"),
        (lambda: BlockMass(0.5, samples=0), "samples"),
        (lambda: BlockMass(0.5, block_size=32, samples=33), "samples"),
        (lambda: BlockMass((0.5, 0.6)).estimate(*_qk(0, 3, 1, 64, 64)), "threshold"),
    ],
)
def test_invalid_parameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_repr_round_trips():
    for pattern in (BlockMass(0.9), BlockMass((0.5, 0.75), block_size=128, estimator="sampled", samples=8)):
        assert eval(repr(pattern)) == pattern


# ---------------------------------------------------------------- the sampled estimator
@given(st.data())
@settings(max_examples=15, deadline=None)
def test_sampled_estimate_equals_slow_reference(data):
    block = data.draw(st.sampled_from([32, 64]), "block")
    kv_len = data.draw(st.integers(1, 5 * block), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2]), "group")
    threshold = data.draw(st.floats(0.05, 0.99), "threshold")
    samples = data.draw(st.integers(1, 6), "samples")
    q, k = _qk(
        data.draw(st.integers(0, 999)), heads, kv_heads, q_len, kv_len, peak=data.draw(st.sampled_from([0.3, 3.0]))
    )
    got = BlockMass(threshold, block_size=block, estimator="sampled", samples=samples).estimate(q, k)
    assert _rows(got.tiles) == reference_block_mass(
        q, k, threshold, block_size=block, estimator="sampled", samples=samples
    )


def test_sampled_rows_end_each_block():
    from sparseattn.estimation.block_mass import sampled_rows

    assert sampled_rows(100, 32, 4, torch.device("cpu")).tolist() == [
        [7, 15, 23, 31],
        [39, 47, 55, 63],
        [71, 79, 87, 95],
        [96, 97, 98, 99],  # a 4-row tail block samples each of its rows
    ]


def _needle_qk(seed: int, heads: int = 2, length: int = 1024, dim: int = 32, block: int = 64):
    """Each row of a query block looks at a few keys near one of two needles the block draws among earlier keys."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(1, heads, length, dim, generator=gen)
    rows = torch.arange(length)
    g = rows // block
    needles = (
        torch.rand(heads, length // block, 2, generator=gen) * (g[::block] * block).clamp(min=1).view(1, -1, 1)
    ).long()
    pick = torch.randint(0, 2, (heads, length), generator=gen)
    target = needles[:, g].gather(-1, pick.unsqueeze(-1)).squeeze(-1) + torch.randint(
        0, 8, (heads, length), generator=gen
    )
    target = torch.minimum(target, rows)
    aim = k[0].gather(1, target.unsqueeze(-1).expand(-1, -1, dim))
    q = 0.3 * torch.randn(1, heads, length, dim, generator=gen) + 12.0 * aim / aim.norm(dim=-1, keepdim=True)
    return q, k


def test_sampled_shares_are_sharper_than_pooled_on_needles():
    """Rows that each look at a few keys: pooled means dilute them and keep nearly every block; sampled
    rows keep under half as many blocks and still cover most of the true attention mass."""
    q, k = _needle_qk(0)
    length, block = q.shape[2], 64
    scores = (q[0] @ k[0].transpose(-1, -2)) / q.shape[-1] ** 0.5
    truth = torch.softmax(scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf")), -1)
    reachable = 2 * (length // block) * (length // block + 1) // 2
    kept, covered = {}, {}
    for estimator in ("pooled", "sampled"):
        tiles = BlockMass(0.9, block_size=block, estimator=estimator).estimate(q, k).tiles
        kept[estimator] = int(tiles.sum())
        mask = tiles.repeat_interleave(block, 1).repeat_interleave(block, 2)
        covered[estimator] = float((truth * mask).sum(-1).mean())
    assert kept["pooled"] >= 0.9 * reachable and covered["pooled"] >= 0.9
    assert kept["sampled"] <= 0.5 * kept["pooled"] and covered["sampled"] >= 0.8, (kept, covered)
