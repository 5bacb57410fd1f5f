"""The block-sparse backward kernels equal fp64 autograd through the oracle (CPU: Triton's interpreter).

bf16 is not tested here: the interpreter's bf16 ``tl.dot`` is wrong; the GPU tests cover it. Sizes stay
small (the interpreter runs every program in Python) and examples few: the structure is what matters.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_kernel_triton import random_inputs, random_mask, with_columns

from sparseattn.kernels.attention import backward, launch
from sparseattn.kernels.attention.backward import BackwardConfig, triton_sparse_attention_backward
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.planning.dkdv_work import build_dkdv_work, dkdv_work
from sparseattn.kernels.planning.kv_major import build_kv_major, dq_order, kv_major
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Columns, PerHead, Triangle, Window
from sparseattn.testing.gradients import assert_grads_close_to_oracle
from sparseattn.testing.strategies import lengths, patterns, per_head_patterns

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def poison_buffers(monkeypatch):
    """Fill every gradient, Delta, output and scratch buffer with NaN: an unwritten row cannot pass."""
    grads, outputs = backward._new_grads, launch._new_outputs
    monkeypatch.setattr(backward, "_new_grads", lambda *a: tuple(t.fill_(math.nan) for t in grads(*a)))
    monkeypatch.setattr(launch, "_new_outputs", lambda *a: tuple(t.fill_(math.nan) for t in outputs(*a)))


def gradients(q, k, v, layout, dout, *, scale=None, config=None):
    """The forward kernel's out and lse, then the backward kernels, as the autograd function runs them."""
    out, lse = triton_sparse_attention(q, k, v, layout, scale=scale)
    return triton_sparse_attention_backward(dout, q, k, v, out, lse, layout, scale=scale, config=config)


def sub_tiles(draw, block: tuple[int, int]) -> BackwardConfig:
    sub_m = draw(st.sampled_from([s for s in (16, 32, 64) if block[0] % s == 0]), "sub_m")
    sub_n = draw(st.sampled_from([s for s in (32, 64) if block[1] % s == 0]), "sub_n")
    keys = draw(st.sampled_from([s for s in (32, 64) if block[1] % s == 0]), "keys per dK/dV program")
    key_major = draw(st.booleans(), "key-major dK/dV scores")
    dq_atomic = draw(st.booleans(), "dQ by atomics in the dK/dV kernel")
    tma = draw(st.booleans(), "rows through tensor descriptors")
    flat_steps = draw(st.booleans(), "dK/dV tiles and row steps walked as one loop")
    max_chunk = draw(st.sampled_from([None, 0, 1, 2]), "dK/dV programs split past this many tiles")
    return BackwardConfig(
        sub_m=sub_m,
        sub_n=sub_n,
        keys=keys,
        key_major=key_major,
        dq_atomic=dq_atomic,
        tma=tma,
        flat_steps=flat_steps,
        max_chunk=max_chunk,
    )


@SETTINGS
@given(data=st.data())
def test_backward_matches_oracle_on_random_layouts(data):
    """Random masks (structured, random tiles, empty rows), any lead broadcast, GQA, ragged lengths,
    q_len < kv_len, gathered columns, fp16 and fp32, sub-tiled steps."""
    batch = data.draw(st.sampled_from([1, 2]), "batch")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2, 4]), "group")
    kv_len = data.draw(st.integers(1, 200), "kv_len")
    q_len = data.draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)), "q_len")
    dim = data.draw(st.sampled_from([16, 32, 64]), "dim")
    dtype = data.draw(st.sampled_from([torch.float16, torch.float32]), "dtype")
    block = (data.draw(st.sampled_from([32, 64]), "block_m"), data.draw(st.sampled_from([32, 64]), "block_n"))
    lead = data.draw(st.sampled_from([(1, 1), (1, heads), (batch, heads), (batch, 1)]), "layout lead")
    mask = random_mask(data.draw, lead, q_len, kv_len)
    layout = BlockLayout.from_dense(mask, block)
    if data.draw(st.booleans(), "gathered columns"):
        layout = with_columns(layout, torch.Generator().manual_seed(data.draw(st.integers(0, 999))), 24)
        mask = layout.to_dense()
    scale = data.draw(st.sampled_from([None, 0.3]), "scale")
    q, k, v = random_inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype, data.draw(st.integers(0, 999)))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(dtype)

    grads = gradients(q, k, v, layout, dout, scale=scale, config=sub_tiles(data.draw, block))

    assert all(g.dtype == dtype for g in grads)
    assert_grads_close_to_oracle(grads, q, k, v, mask, dout, scale=scale)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.one_of(patterns(max_len=160, max_leaves=4), per_head_patterns(max_len=160)),
    lens=lengths(max_len=160),
    block=st.tuples(st.sampled_from([32, 64]), st.sampled_from([32, 64])),
    group=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float16, torch.float32]),
    seed=st.integers(0, 999),
)
# Every query of head 1 attends to key 33 alone: dk there is 0 in the oracle and rounding in the kernel
# (its Delta comes from the computed output), which the tolerance must allow from the cancelled terms.
@example(Causal() & Columns(((), (33, 100), ())), (84, 84), (32, 32), 1, torch.float32, 0)
def test_backward_of_lowered_patterns(pattern, lens, block, group, dtype, seed):
    """Random composed patterns, lowered as `sparse_attention` lowers them, against their token truth."""
    q_len, kv_len = lens
    heads = pattern.num_heads or 2
    kv_heads = heads // group if heads % group == 0 else heads
    layout = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads)
    q, k, v = random_inputs(1, heads, kv_heads, q_len, kv_len, 32, dtype, seed)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    mask = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads).unsqueeze(0)
    assert_grads_close_to_oracle(gradients(q, k, v, layout, dout), q, k, v, mask, dout)


# (key_major, dq_atomic, tma, flat_steps): the dK/dV kernel's score orientation, where dQ is summed, whether the
# walked rows come through tensor descriptors, and whether tiles and row steps are one loop.
FLAGS = [
    (False, False, False, False),
    (True, False, False, False),
    (False, True, False, False),
    (False, False, True, False),
    (False, False, False, True),
    (True, True, True, True),
]


@pytest.mark.parametrize("key_major,dq_atomic,tma,flat_steps", FLAGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gathered_columns_from_lowering(dtype, key_major, dq_atomic, tma, flat_steps):
    """A window with vertical lines lowers the lines outside the window's tiles to gathered columns; their
    keys get gradient from every query block that gathers them (chunked prefill, GQA 2:1, batch 2)."""
    pattern = Causal() & (Window(20) | Columns((3, 40, 41, 100, 170)))
    layout = lower(pattern, 150, 200, block_size=(32, 32))
    assert layout.has_columns and int(layout.col_num.sum()) > 0
    q, k, v = random_inputs(2, 2, 1, 150, 200, 32, dtype, 5)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    mask = pattern.to_dense(150, 200).view(1, 1, 150, 200)
    config = BackwardConfig(
        sub_m=32, sub_n=32, keys=32, key_major=key_major, dq_atomic=dq_atomic, tma=tma, flat_steps=flat_steps
    )
    assert_grads_close_to_oracle(gradients(q, k, v, layout, dout, config=config), q, k, v, mask, dout)


@pytest.mark.parametrize("key_major,dq_atomic,tma,flat_steps", FLAGS)
def test_wide_tiles_head_dim_128_sub_tiled(key_major, dq_atomic, tma, flat_steps):
    """128 x 128 tiles at head dim 128, walked 64 rows (dK/dV) and 64 columns (dQ) at a time, each key
    block split over two dK/dV programs; a triangle with a ragged end, whose 200-key window makes the tile
    of rows 256-299 by keys 128-255 FULL (every walk of the dK/dV kernel runs)."""
    pattern = Triangle(sink=8, window=200, last=40)
    layout = lower(pattern, 300, 300, block_size=(128, 128))
    q, k, v = random_inputs(1, 2, 1, 300, 300, 128, torch.float16, 2)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    config = BackwardConfig(
        sub_m=64, sub_n=64, keys=64, key_major=key_major, dq_atomic=dq_atomic, tma=tma, flat_steps=flat_steps
    )
    mask = pattern.to_dense(300, 300).view(1, 1, 300, 300)
    assert_grads_close_to_oracle(gradients(q, k, v, layout, dout, config=config), q, k, v, mask, dout)


@pytest.mark.parametrize("key_major,dq_atomic,tma,flat_steps", FLAGS)
def test_empty_layout_and_unattended_keys_give_zero_gradients(key_major, dq_atomic, tma, flat_steps):
    """No pair at all: lse is -inf on every row, and every gradient must be exactly 0, never NaN."""
    layout = BlockLayout.from_dense(torch.zeros(1, 1, 64, 96, dtype=torch.bool), (32, 32))
    q, k, v = random_inputs(1, 2, 1, 64, 96, 32, torch.float32, 1)
    dout = torch.randn_like(q)
    config = BackwardConfig(
        sub_m=32, sub_n=32, keys=32, key_major=key_major, dq_atomic=dq_atomic, tma=tma, flat_steps=flat_steps
    )
    for g in gradients(q, k, v, layout, dout, config=config):
        assert torch.equal(g, torch.zeros_like(g))


def test_deterministic():
    """dK/dV are summed over a GQA group in a fixed order: two runs agree bit for bit."""
    layout = lower(Triangle(sink=4, window=40, last=20), 160, 192, block_size=(32, 32))
    q, k, v = random_inputs(1, 4, 1, 160, 192, 32, torch.float16, 3)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(torch.float16)
    out, lse = triton_sparse_attention(q, k, v, layout)
    first = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    second = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_kv_major_view_is_the_transposed_layout(data):
    """For each (lead batch, lead head, key block): the ascending query blocks holding it FULL, PARTIAL
    (with the tile's bitmap), and the gathered columns inside it per query block."""
    lead = data.draw(st.sampled_from([(1, 1), (1, 3), (2, 3), (2, 1)]), "lead")
    kv_len = data.draw(st.integers(1, 300), "kv_len")
    q_len = data.draw(st.integers(1, kv_len), "q_len")
    block = (data.draw(st.sampled_from([16, 32, 64]), "block_m"), data.draw(st.sampled_from([32, 64]), "block_n"))
    layout = BlockLayout.from_dense(random_mask(data.draw, lead, q_len, kv_len), block)
    if data.draw(st.booleans(), "gathered columns"):
        layout = with_columns(layout, torch.Generator().manual_seed(data.draw(st.integers(0, 99))), 40)
    view = build_kv_major(layout)
    grid, mask_ids = layout._tile_grid()  # [B, H, QB, KB]
    for b in range(lead[0]):
        for h in range(lead[1]):
            for kb in range(layout.num_kv_blocks):
                f0, fn = int(view.full_q_start[b, h, kb]), int(view.full_q_num[b, h, kb])
                p0, pn = int(view.part_q_start[b, h, kb]), int(view.part_q_num[b, h, kb])
                full = view.full_q_indices[f0 : f0 + fn].tolist()
                part = view.part_q_indices[p0 : p0 + pn].tolist()
                assert full == torch.nonzero(grid[b, h, :, kb] == 2).flatten().tolist()
                assert part == torch.nonzero(grid[b, h, :, kb] == 1).flatten().tolist()
                assert view.part_mask_ids[p0 : p0 + pn].tolist() == mask_ids[b, h, part, kb].tolist()
                c0, cn = int(view.col_q_start[b, h, kb]), int(view.col_q_num[b, h, kb])
                got = {}
                for g in range(c0, c0 + cn):
                    slot, count = int(view.col_slot[g]), int(view.col_count[g])
                    got[int(view.col_q_indices[g])] = layout.col_indices[slot : slot + count].tolist()
                assert list(got) == sorted(got)
                want = {}
                if layout.col_indices is not None:
                    for qb in range(layout.num_q_blocks):
                        s0, sn = int(layout.col_start[b, h, qb]), int(layout.col_num[b, h, qb])
                        cols = [c for c in layout.col_indices[s0 : s0 + sn].tolist() if c // block[1] == kb]
                        if cols:
                            want[qb] = cols
                assert got == want
    assert kv_major(layout) is kv_major(layout)  # memoised on the layout


def test_dq_order_puts_heavy_rows_first():
    """A triangle's last query blocks (its dense last rows) lead the dQ kernel's order; every row once."""
    layout = lower(Triangle(sink=8, window=64, last=64), 512, 512, block_size=(32, 32))
    order = dq_order(layout, 2, 4)
    qbs = layout.num_q_blocks
    assert sorted(order.tolist()) == list(range(2 * 4 * qbs))
    assert int(order[0]) % qbs >= qbs - 2


@pytest.mark.parametrize("max_chunk", [None, 0, 1, 3])
@pytest.mark.parametrize("lead_heads", [1, 4])
def test_dkdv_work_covers_every_tile_once(max_chunk, lead_heads):
    """Every (program, query head, FULL slot) is in exactly one item, and each (program, head)'s PARTIAL
    tiles and columns in exactly one (its first slice); items run heaviest first; a split program's slots
    are its items' and are merged once, and the sink key block's program is split first."""
    pattern = Triangle(sink=8, window=64, last=64)
    if lead_heads > 1:
        pattern = PerHead((pattern, Causal(), pattern, Triangle(sink=4, window=32, last=32)))
    layout = lower(pattern, 512, 512, block_size=(32, 32), num_heads=pattern.num_heads)
    batch, heads, kv_heads = 2, 4, 2
    group, kbs = heads // kv_heads, layout.num_kv_blocks
    work = build_dkdv_work(layout, batch, heads, kv_heads, max_chunk)
    view = kv_major(layout)
    covered: dict[tuple[int, int], list[int]] = {}
    rest: dict[tuple[int, int], int] = {}
    costs = []
    slots = {}
    for prog, g_lo, g_hi, f_lo, f_hi, slot in work.items.tolist():
        b, kv_head, kb = prog // kbs // kv_heads, prog // kbs % kv_heads, prog % kbs
        cost = 0
        for g in range(g_lo, g_hi):
            h = kv_head * group + g
            lead = (b % layout.batch_size, h % layout.num_heads, kb)
            n_full = int(view.full_q_num[lead])
            taken = list(range(f_lo, min(f_hi, n_full)))
            covered.setdefault((prog, g), []).extend(taken)
            cost += len(taken)
            if f_lo == 0:
                rest[(prog, g)] = rest.get((prog, g), 0) + 1
                cost += int(view.part_q_num[lead]) + int(view.col_q_num[lead])
        costs.append(cost)
        if slot >= 0:
            slots.setdefault(prog, []).append(slot)
    for prog in range(batch * kv_heads * kbs):
        b, kv_head, kb = prog // kbs // kv_heads, prog // kbs % kv_heads, prog % kbs
        for g in range(group):
            lead = (b % layout.batch_size, (kv_head * group + g) % layout.num_heads, kb)
            assert sorted(covered[(prog, g)]) == list(range(int(view.full_q_num[lead])))
            assert rest[(prog, g)] == 1
    assert costs == sorted(costs, reverse=True)
    merged = {m[0]: list(range(m[1], m[1] + m[2])) for m in work.merges.tolist()}
    assert merged == {p: sorted(s) for p, s in slots.items()} and len(merged) == work.merges.shape[0]
    assert sum(len(s) for s in slots.values()) == work.num_slots
    if max_chunk == 0:
        assert work.num_slots == 0
    if work.max_chunk:  # whatever splits, the sink key block (read by every query block) is among it
        assert any(m[0] % kbs == 0 for m in work.merges.tolist())
    assert dkdv_work(layout, batch, heads, kv_heads, max_chunk) is dkdv_work(layout, batch, heads, kv_heads, max_chunk)


@pytest.mark.parametrize("max_chunk", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_split_dkdv_programs_match_the_oracle(max_chunk, dtype):
    """Split dK/dV programs (per query head, FULL slices, merged in slot order) on a triangle with gathered
    columns, GQA 2:1, batch 2, ragged lengths; and the same bits twice."""
    pattern = Triangle(sink=8, window=40, last=24) | (Causal() & Columns((3, 50, 51, 130)))
    layout = lower(pattern, 150, 190, block_size=(32, 32))
    q, k, v = random_inputs(2, 4, 2, 150, 190, 32, dtype, 11)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(11)).to(dtype)
    config = BackwardConfig(sub_m=16, sub_n=32, keys=32, max_chunk=max_chunk)
    assert build_dkdv_work(layout, 2, 4, 2, max_chunk).num_slots > 0
    grads = gradients(q, k, v, layout, dout, config=config)
    mask = pattern.to_dense(150, 190).view(1, 1, 150, 190)
    assert_grads_close_to_oracle(grads, q, k, v, mask, dout)
    again = gradients(q, k, v, layout, dout, config=config)
    assert all(torch.equal(a, b) for a, b in zip(grads, again, strict=True))


def test_rejects_mismatched_gradient_shapes():
    layout = BlockLayout.from_dense(torch.ones(1, 1, 32, 32, dtype=torch.bool), (32, 32))
    q, k, v = random_inputs(1, 1, 1, 32, 32, 32, torch.float32, 0)
    out, lse = triton_sparse_attention(q, k, v, layout)
    with pytest.raises(ValueError, match="dout"):
        triton_sparse_attention_backward(out[:, :, :16], q, k, v, out, lse, layout)
    with pytest.raises(ValueError, match="lse"):
        triton_sparse_attention_backward(out, q, k, v, out, lse[..., :16], layout)
    with pytest.raises(ValueError, match="must divide"):
        triton_sparse_attention_backward(out, q, k, v, out, lse, layout, config=BackwardConfig(sub_m=64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sub_m": 48}, "sub_m"),
        ({"keys": 16}, "keys"),
        ({"dq_warps": 3}, "dq_warps"),
        ({"key_major": 1}, "key_major"),
        ({"tma": "yes"}, "tma"),
    ],
)
def test_backward_config_names_the_bad_knob(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BackwardConfig(**kwargs)
