"""Dynamic patterns on the CPU: estimators against slow references, lowering exactness, kernels against the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.attention import sparse_attention
from sparseattn.estimation import (
    BlockTopK,
    BlockTopKTiles,
    HeadTiles,
    MixedHeads,
    VerticalSlash,
    VerticalSlashIndices,
    from_minference_json,
    load_yaml,
    to_yaml,
)
from sparseattn.estimation.block_topk import reachable_blocks
from sparseattn.estimation.topk import PAD, select_top, top_indices
from sparseattn.kernels.estimation.triton_topk import triton_block_topk, triton_block_topk_keep, triton_select_top
from sparseattn.lowering import lower
from sparseattn.lowering.tile_grid import causal_bitmaps, torch_tile_lists
from sparseattn.patterns import AShape, PerHead, Streaming
from sparseattn.testing.checks import check_layout_invariants
from sparseattn.testing.dynamic_reference import reference_block_topk, reference_vertical_slash
from sparseattn.testing.tolerance import assert_close_to_oracle

ROOT = Path(__file__).resolve().parents[1]


def _qk(
    seed: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, heads, q_len, dim, generator=gen), torch.randn(1, kv_heads, kv_len, dim, generator=gen))


def _rows(t: torch.Tensor) -> list[list[int]]:
    return [[v for v in row if v != PAD] for row in t.tolist()]


# ---------------------------------------------------------------- estimators == slow references
@pytest.mark.parametrize(
    "seed, heads, kv_heads, q_len, kv_len, vertical, slash, last_q",
    [
        (0, 2, 1, 160, 160, 40, 120, 64),
        (1, 4, 2, 96, 200, (31, 50, 35, 60), (101, 150, 110, 180), 64),
        (2, 2, 2, 40, 130, 33, 105, 16),
    ],
)
def test_vertical_slash_estimate_matches_reference(seed, heads, kv_heads, q_len, kv_len, vertical, slash, last_q):
    q, k = _qk(seed, heads, kv_heads, q_len, kv_len)
    est = VerticalSlash(vertical, slash, last_q=last_q).estimate(q, k)
    ref_v, ref_s = reference_vertical_slash(q, k, vertical, slash, last_q=last_q)
    assert _rows(est.vertical) == ref_v
    assert _rows(est.slash) == ref_s


def test_vertical_slash_ties_go_to_lower_indices():
    # q = 0 makes every logit equal: column and diagonal sums tie exactly over all but the last keys.
    q, k = torch.zeros(1, 1, 200, 8), torch.randn(1, 1, 200, 8)
    est = VerticalSlash(40, 110).estimate(q, k)
    assert _rows(est.vertical) == [list(range(40))]
    assert _rows(est.slash) == [list(range(110))]
    ref_v, ref_s = reference_vertical_slash(q, k, 40, 110)
    assert (_rows(est.vertical), _rows(est.slash)) == (ref_v, ref_s)


@pytest.mark.parametrize(
    "seed, heads, kv_heads, q_len, kv_len, topk, block",
    [
        (0, 2, 1, 256, 256, 3, 32),
        (1, 4, 2, 150, 233, (2, 4, 1, 3), 32),
        (2, 2, 2, 64, 300, 5, 32),
    ],
)
def test_block_topk_estimate_matches_reference(seed, heads, kv_heads, q_len, kv_len, topk, block):
    q, k = _qk(seed, heads, kv_heads, q_len, kv_len)
    tiles = BlockTopK(topk, block_size=block).estimate(q, k).tiles
    got = [[torch.nonzero(row).view(-1).tolist() for row in head] for head in tiles]
    assert got == reference_block_topk(q, k, topk, block_size=block)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.data())
@settings(max_examples=60, deadline=None)
def test_select_top_is_score_then_index(scores, data):
    k = data.draw(st.integers(1, len(scores)))
    got = torch.nonzero(select_top(torch.tensor([scores], dtype=torch.float32), torch.tensor([k]), k)[0]).view(-1)
    want = sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])
    assert got.tolist() == want


@given(
    st.lists(
        st.lists(
            st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 2.5, -3.0, 1e-30, -1e-30, float("inf")]), min_size=6, max_size=6
        ),
        min_size=1,
        max_size=3,
    ),
    st.data(),
)
@settings(max_examples=80, deadline=None)
def test_top_indices_are_score_then_index_ascending_and_padded(rows, data):
    k_max = data.draw(st.integers(1, 6))
    k = data.draw(st.lists(st.integers(1, k_max), min_size=len(rows), max_size=len(rows)))
    got = top_indices(torch.tensor(rows, dtype=torch.float32), torch.tensor(k), k_max)
    for row, budget, indices in zip(rows, k, got.tolist(), strict=True):
        best = sorted(sorted(range(len(row)), key=lambda i: (-row[i], i))[:budget])
        assert indices == best + [PAD] * (k_max - budget)


# ---------------------------------------------------------------- lowering properties
@st.composite
def vertical_slash_indices(draw, form: str) -> tuple[VerticalSlashIndices, int, int]:
    kv_len = draw(st.integers(1, 200))
    q_len = draw(st.integers(1, kv_len))
    heads = draw(st.integers(1, 3))
    width = draw(st.integers(1, 6))

    def rows() -> torch.Tensor:
        sets = [sorted(draw(st.sets(st.integers(0, kv_len + 5), min_size=1, max_size=width))) for _ in range(heads)]
        return torch.tensor([s + [PAD] * (width - len(s)) for s in sets])

    return VerticalSlashIndices(rows(), rows(), form=form, block_size=32), q_len, kv_len


def _token_lines(p: VerticalSlashIndices, q_len: int, kv_len: int) -> torch.Tensor:
    """Every vertical and slash token (causal), from the index lists directly."""
    q_pos = torch.arange(q_len).view(1, -1, 1) + kv_len - q_len
    key = torch.arange(kv_len).view(1, 1, -1)
    out = torch.zeros(p.num_heads, q_len, kv_len, dtype=torch.bool)
    for h, (cols, diags) in enumerate(zip(_rows(p.vertical), _rows(p.slash), strict=True)):
        lines = torch.isin(key, torch.tensor(cols)) | torch.isin(q_pos - key, torch.tensor(diags))
        out[h] = (lines & (key <= q_pos))[0]
    return out


@given(vertical_slash_indices("block"))
@settings(max_examples=40, deadline=None)
def test_block_form_lowering_is_exact_and_covers_every_line(case):
    pattern, q_len, kv_len = case
    layout = lower(pattern, q_len, kv_len)
    check_layout_invariants(layout)
    truth = pattern.to_dense(q_len, kv_len)
    assert torch.equal(layout.to_dense()[0], truth)
    lines = _token_lines(pattern, q_len, kv_len)
    assert not (lines & ~truth).any(), "a vertical or slash token is not computed"


@given(vertical_slash_indices("token"), st.sampled_from([(32, 32), (64, 32), (32, 64)]))
@settings(max_examples=30, deadline=None)
def test_token_form_computes_exactly_the_lines(case, block_size):
    pattern, q_len, kv_len = case
    layout = lower(pattern, q_len, kv_len, block_size=block_size)
    check_layout_invariants(layout)
    lines = _token_lines(pattern, q_len, kv_len)
    assert torch.equal(pattern.to_dense(q_len, kv_len), lines)
    assert torch.equal(layout.to_dense()[0], lines), "token form computes outside (or misses) its lines"


@given(st.integers(1, 150), st.data())
@settings(max_examples=25, deadline=None)
def test_block_topk_lowering_is_exact(kv_len, data):
    q_len = data.draw(st.integers(1, kv_len))
    qb, kb = -(-q_len // 32), -(-kv_len // 32)
    tiles = torch.tensor(data.draw(st.lists(st.booleans(), min_size=2 * qb * kb, max_size=2 * qb * kb))).view(2, qb, kb)
    # The tightest true bound on kept tiles per row sizes the lists exactly; the layout must not change.
    bound = data.draw(st.sampled_from([None, max(int(tiles.sum(-1).max()), 1)]), "max_per_row")
    pattern = BlockTopKTiles(tiles, 32, q_len, kv_len, max_per_row=bound)
    layout = lower(pattern, q_len, kv_len)
    check_layout_invariants(layout)
    assert torch.equal(layout.to_dense()[0], pattern.to_dense(q_len, kv_len))


def test_block_topk_row_bound_is_checked():
    tiles = torch.ones(1, 3, 3, dtype=torch.bool)  # the last query block keeps two FULL tiles
    with pytest.raises(RuntimeError):
        lower(BlockTopKTiles(tiles, 32, 96, 96, max_per_row=1), 96, 96)


# ---------------------------------------------------------------- backends on the estimate == oracle
@pytest.mark.parametrize("impl", ["triton", "flex", "reference"])
@pytest.mark.parametrize("which", ["vs_block", "vs_token", "block_topk", "mixed"])
def test_backends_on_estimate_match_oracle(impl, which):
    q, k = _qk(7, 4, 2, 192, 192, dim=32)
    v = torch.randn_like(k)
    if which == "block_topk":
        concrete = BlockTopK(2, block_size=64).estimate(q, k)
    elif which == "mixed":
        concrete = MixedHeads((VerticalSlash(20, 60), BlockTopK(2), BlockTopK(1), VerticalSlash(35, 101))).estimate(
            q, k
        )
    else:
        concrete = VerticalSlash(35, 101, form=which[3:]).estimate(q, k)
    layout = lower(concrete, 192, 192)
    out, lse = sparse_attention(q, k, v, layout, impl=impl, return_lse=True)
    assert_close_to_oracle(out, lse, q, k, v, concrete.to_dense(192, 192).unsqueeze(0))


@pytest.mark.parametrize("block", [32, 128])
def test_estimate_passed_to_sparse_attention_runs_on_its_own_tiles(block):
    """No tile size chosen: the Triton path takes the estimate's tiles (32 and 128 differ from its default)."""
    from sparseattn.attention import default_block_size

    q, k = _qk(11, 4, 2, 256, 256, dim=32)
    v = torch.randn_like(k)
    concrete = VerticalSlash(35, 101, block_size=block).estimate(q, k)
    assert default_block_size("triton", 32, q.dtype, concrete, 256, 256, group=2) == (block, block)
    out, lse = sparse_attention(q, k, v, concrete, impl="triton", return_lse=True)
    assert_close_to_oracle(out, lse, q, k, v, concrete.to_dense(256, 256).unsqueeze(0))


# ---------------------------------------------------------------- parameters, repr, configs
@pytest.mark.parametrize(
    "pattern",
    [
        VerticalSlash(512, 2048),
        VerticalSlash((30, 40), (100, 200), last_q=32, form="token"),
        BlockTopK((4, 8), 128),
        MixedHeads((VerticalSlash(100, 800), BlockTopK(4), AShape(1, 4))),
    ],
)
def test_repr_round_trips(pattern):
    assert eval(repr(pattern)) == pattern


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: VerticalSlash(0, 10), "vertical"),
        (lambda: VerticalSlash(10, [0, 2]), "slash"),
        (lambda: VerticalSlash(10, 10, form="exact"), "form"),
        (lambda: VerticalSlash(10, 10, block_size=48), "block_size"),
        (lambda: VerticalSlash((1, 2), (1, 2, 3)), "budgets"),
        (lambda: BlockTopK(-1), "topk"),
        (lambda: VerticalSlash(10, 10).estimate(torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4)), "q"),
        (lambda: VerticalSlash((5, 5), 10).estimate(torch.zeros(1, 3, 8, 4), torch.zeros(1, 3, 8, 4)), "vertical"),
        (
            lambda: lower(VerticalSlash(5, 10).estimate(*_qk(0, 1, 1, 64, 64)), 64, 64, block_size=(128, 128)),
            "block_size",
        ),
    ],
)
def test_invalid_parameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_minference_json_loads_per_head_patterns():
    config = [
        {"0": ["vertical_and_slash", 1000, 6096, 0.9], "1": ["vertical_and_slash", 30, 800, 0.8]},
        {"0": ["vertical_and_slash", 500, 700, 0.5], "1": ["vertical_and_slash", 500, 700, 0.4]},
        {"1": ["stream_llm", 1, 4, 0.1], "0": ["block_sparse", 8, 0, 0.2]},
    ]
    layers = from_minference_json(config, last_q=32)
    assert layers[0] == VerticalSlash((1000, 30), (6096, 800), last_q=32, form="minference")
    assert layers[1] == VerticalSlash(500, 700, last_q=32, form="minference")
    assert layers[2] == MixedHeads((BlockTopK(8), Streaming(sink=1, window=4)))
    assert from_minference_json(config[:1], form="block")[0].form == "block"
    with pytest.raises(ValueError, match=r"config\[0\]\['0'\]"):
        from_minference_json([{"0": ["dilated", 1, 2, 0.0]}])


def test_mixed_heads_estimate_is_per_head():
    q, k = _qk(3, 3, 1, 128, 128)
    mixed = MixedHeads((VerticalSlash(31, 101), BlockTopK(2, 32), AShape(1, 1)))
    concrete = mixed.estimate(q, k)
    assert isinstance(concrete, PerHead)
    dense = concrete.to_dense(128, 128)
    assert torch.equal(dense[0], VerticalSlash((31, 1, 1), (101, 1, 1)).estimate(q, k).to_dense(128, 128)[0])
    assert torch.equal(dense[2], AShape(1, 1).to_dense(128, 128)[0])


@pytest.mark.parametrize("q_len, kv_len", [(128, 128), (70, 200), (200, 201)])
def test_mixed_dynamic_heads_estimate_to_head_tiles(q_len, kv_len):
    """All heads dynamic: one `HeadTiles` whose mask is, head by head, that of its kind's estimate, and
    whose one-pass lowering computes exactly that mask."""
    q, k = _qk(5, 4, 2, q_len, kv_len)
    heads = (
        VerticalSlash(9, 40, block_size=32),
        BlockTopK(2, 32),
        VerticalSlash(20, 15, block_size=32),
        BlockTopK(3, 32),
    )
    concrete = MixedHeads(heads).estimate(q, k)
    assert isinstance(concrete, HeadTiles)
    vs = VerticalSlash((9, 1, 20, 1), (40, 1, 15, 1), block_size=32).estimate(q, k).to_dense(q_len, kv_len)
    bt = BlockTopK((1, 2, 1, 3), 32).estimate(q, k).to_dense(q_len, kv_len)
    dense = concrete.to_dense(q_len, kv_len)
    is_vs = torch.tensor([True, False, True, False]).view(-1, 1, 1)
    assert torch.equal(dense, torch.where(is_vs, vs, bt))
    layout = lower(concrete, q_len, kv_len)
    check_layout_invariants(layout)
    assert torch.equal(layout.to_dense()[0], dense)


def test_yaml_round_trip(tmp_path):
    layers = [VerticalSlash((1000, 30), (6096, 800)), BlockTopK(8), MixedHeads((VerticalSlash(5, 100), AShape(1, 4)))]
    path = tmp_path / "layers.yaml"
    path.write_text(to_yaml(layers))
    assert load_yaml(path) == layers


@pytest.mark.parametrize("path", sorted((ROOT / "conf" / "minference").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_instantiates(path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    layers = load_yaml(path)
    assert len(layers) == cfg.num_layers
    for layer in layers:
        assert isinstance(layer, VerticalSlash)
        assert layer.num_heads in (None, cfg.num_heads)


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_triton_select_top_equals_torch_rule(data):
    """The Triton selection (interpreter on CPU) against the torch oracle: ties, +-inf, -0.0, per-row k."""
    n = data.draw(st.integers(1, 300), "n")
    rows = data.draw(st.integers(1, 4), "rows")
    values = st.sampled_from([-2.0, -1.0, -0.0, 0.0, 1.0, 2.5, float("inf"), float("-inf")]) | st.floats(
        -3, 3, width=32
    )
    scores = torch.tensor(data.draw(st.lists(values, min_size=rows * n, max_size=rows * n)), dtype=torch.float32)
    k = torch.tensor(data.draw(st.lists(st.integers(1, n), min_size=rows, max_size=rows)))
    got = triton_select_top(scores.view(rows, n), k)
    assert torch.equal(got, select_top(scores.view(rows, n), k, int(k.max())))


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_triton_block_topk_keep_equals_masked_torch_rule(data):
    """Causal rules fused into the selection (interpreter) == +-inf written into the grid, then the torch rule."""
    block = data.draw(st.sampled_from([32, 64]), "block")
    kv_len = data.draw(st.integers(1, 12 * block), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    heads = data.draw(st.integers(1, 3), "heads")
    qb, kb = -(-q_len // block), -(-kv_len // block)
    # Few distinct values: many ties at the budget boundary.
    values = st.sampled_from([-1.0, 0.0, 0.5, 2.0]) | st.floats(-3, 3, width=32)
    raw = torch.tensor(data.draw(st.lists(values, min_size=heads * qb * kb, max_size=heads * qb * kb)))
    raw = raw.view(heads, qb, kb)
    k = torch.tensor(data.draw(st.lists(st.integers(1, kb), min_size=heads, max_size=heads))).view(-1, 1)
    reach, forced = reachable_blocks(q_len, kv_len, block, raw.device)
    masked = raw.masked_fill(~reach, float("-inf")).masked_fill(forced, float("inf"))
    expected = (select_top(masked, k, int(k.max())) & reach) | forced
    assert torch.equal(triton_block_topk_keep(raw, k, q_len, kv_len, block), expected)
    # The same pass also writes the layout's lists: equal, row by row, to lowering the expected grid.
    bound = int(k.max()) + 3
    _, kind_ids = causal_bitmaps(block, q_len, kv_len)
    keep, lists = triton_block_topk(raw, k, q_len, kv_len, block, row_bound=bound, kind_ids=kind_ids)
    want = torch_tile_lists(expected, kind_ids, q_len=q_len, kv_len=kv_len, block=block, bound=expected.numel())
    assert torch.equal(keep, expected)
    assert torch.equal(lists[0], want[0]) and torch.equal(lists[3], want[3])
    assert _row_lists(lists[0], lists[1], lists[2]) == _row_lists(want[0], want[1], want[2])
    assert _row_lists(lists[3], lists[4], lists[5], lists[6]) == _row_lists(want[3], want[4], want[5], want[6])


def _row_lists(num: torch.Tensor, start: torch.Tensor, *flats: torch.Tensor) -> list[list[tuple[int, ...]]]:
    """Each row's entries across the flat lists (storage between rows is not compared)."""
    rows = zip(num.reshape(-1).tolist(), start.reshape(-1).tolist(), strict=True)
    return [list(zip(*(f[s : s + n].tolist() for f in flats), strict=True)) for n, s in rows]
