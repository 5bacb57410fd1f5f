"""The block-sparse Triton kernel equals the fp64 oracle (CPU: Triton's interpreter, small sizes).

bf16 is not tested here: the interpreter's bf16 ``tl.dot`` is wrong; the GPU tests cover it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseattn.attention import default_block_size
from sparseattn.kernels.attention import config as launch_config
from sparseattn.kernels.attention import gluon_fwd, launch
from sparseattn.kernels.attention.config import (
    KernelConfig,
    default_config,
    packable_heads,
    preferred_block_size,
    warp_specialized_unsupported,
)
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Triangle
from sparseattn.testing.strategies import lengths, patterns, per_head_patterns
from sparseattn.testing.tolerance import assert_close_to_oracle

# Few examples under the interpreter; tests/gpu/test_kernel_gpu.py runs the compiled kernel on more.
SETTINGS = settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Fill every output and scratch buffer with NaN, so an unwritten row cannot pass as correct."""
    original = launch._new_outputs
    monkeypatch.setattr(launch, "_new_outputs", lambda *a: tuple(t.fill_(math.nan) for t in original(*a)))


def positions(q_len: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_pos = torch.arange(q_len).view(-1, 1) + (kv_len - q_len)
    return q_pos, torch.arange(kv_len).view(1, -1)


def random_mask(draw, lead: tuple[int, int], q_len: int, kv_len: int) -> torch.Tensor:
    """A mask mixing structure (causal, window, sink, last rows) with random tiles and empty rows."""
    q_pos, k = positions(q_len, kv_len)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["causal", "triangle", "random", "blocky"]))
    causal = k <= q_pos
    if kind == "causal":
        base = causal.expand(*lead, q_len, kv_len)
    elif kind == "triangle":
        sink, window, last = draw(st.integers(0, 40)), draw(st.integers(1, 100)), draw(st.integers(0, 64))
        tri = causal & ((k < sink) | (q_pos - k < window) | (q_pos >= kv_len - last))
        base = tri.expand(*lead, q_len, kv_len)
    elif kind == "random":
        base = torch.rand(*lead, q_len, kv_len, generator=gen) < draw(st.sampled_from([0.05, 0.3, 0.9]))
    else:
        coarse = torch.rand(*lead, -(-q_len // 16), -(-kv_len // 16), generator=gen) < 0.4
        base = coarse.repeat_interleave(16, -2).repeat_interleave(16, -1)[..., :q_len, :kv_len] & causal
    mask = base.clone()
    empty_rows = torch.rand(*lead, q_len, generator=gen) < draw(st.sampled_from([0.0, 0.1]))
    mask[empty_rows] = False
    return mask


def with_columns(layout: BlockLayout, gen: torch.Generator, per_row: int) -> BlockLayout:
    """Add gathered key columns in key blocks that no tile of the row covers (as lowering produces them)."""
    dense = layout.to_dense()
    lb, lh, q_len, kv_len = dense.shape
    bm, bn = layout.block_size
    qb_dim, kb_dim = layout.num_q_blocks, layout.num_kv_blocks
    padded = torch.zeros(lb, lh, qb_dim * bm, kb_dim * bn, dtype=torch.bool)
    padded[..., :q_len, :kv_len] = dense
    covered = padded.view(lb, lh, qb_dim, bm, kb_dim, bn).any(3).any(-1)  # [lb, lh, QB, KB]
    free = ~covered.repeat_interleave(bn, -1)[..., :kv_len]  # [lb, lh, QB, kv_len]
    score = torch.rand(free.shape, generator=gen).masked_fill(~free, -1.0)
    top = score.topk(min(per_row, kv_len), dim=-1)
    chosen = top.values > 0
    cols = torch.where(chosen, top.indices, kv_len).sort(-1).values  # ascending, unchosen last
    col_num = chosen.sum(-1)
    return replace(
        layout,
        col_num=col_num.to(torch.int32),
        col_start=(torch.cumsum(col_num.view(-1), 0) - col_num.view(-1)).view(col_num.shape),
        col_indices=cols[cols < kv_len].to(torch.int32),
    )


def random_inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=gen).to(dtype)
    return q, k, v


@SETTINGS
@given(data=st.data())
def test_kernel_matches_oracle(data):
    batch = data.draw(st.sampled_from([1, 2]), "batch")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 2, 4]), "group")
    kv_len = data.draw(st.integers(1, 320), "kv_len")
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
    max_chunk = data.draw(st.sampled_from([None, 0, 1, 2, 3]), "max_chunk")
    heavy_first: bool | None = data.draw(st.booleans(), "heavy_first")
    if data.draw(st.booleans(), "device-built layout: grid order, no work list"):
        layout, max_chunk, heavy_first = replace(layout, device_built=True), None, None
    scale = data.draw(st.sampled_from([None, 0.3]), "scale")
    config = replace(
        default_config(layout, dim), tma=data.draw(st.booleans(), "tma"), full_runs=data.draw(st.booleans(), "runs")
    )
    config = replace(config, q_in_registers=config.tma and data.draw(st.booleans(), "q in registers"))
    if layout.num_heads == 1:  # heads of one kv head may share a program
        config = replace(
            config, pack=data.draw(st.sampled_from([p for p in (1, 2, 4) if (heads // kv_heads) % p == 0]))
        )
    q, k, v = random_inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype, data.draw(st.integers(0, 999)))

    out, lse = triton_sparse_attention(
        q, k, v, layout, scale=scale, max_chunk=max_chunk, heavy_first=heavy_first, config=config
    )

    assert out.dtype == dtype and out.shape == q.shape and lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert_close_to_oracle(out, lse, q, k, v, mask, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_causal_gqa_ragged_chunked_prefill(dtype):
    """Chunked prefill: 200 queries at the end of 448 keys, GQA 4:1, ragged tails, split rows."""
    q_len, kv_len = 200, 448
    q_pos, k = positions(q_len, kv_len)
    mask = (k <= q_pos)[None, None]
    layout = BlockLayout.from_dense(mask, (64, 64))
    q, k, v = random_inputs(2, 4, 1, q_len, kv_len, 64, dtype, 0)
    out, lse = triton_sparse_attention(q, k, v, layout, max_chunk=2)
    assert_close_to_oracle(out, lse, q, k, v, mask)


@pytest.mark.parametrize("pack", [1, 2])
def test_split_rows_with_full_runs(pack):
    """Rows that start with runs of FULL tiles, cut into chunks, with packed heads (each chunk writes one
    scratch slot per head): a sink, a window and dense last rows, 32 x 32 tiles."""
    q_pos, k = positions(512, 512)
    mask = ((k <= q_pos) & ((k < 8) | (q_pos - k < 64) | (q_pos >= 480)))[None, None]
    layout = BlockLayout.from_dense(mask, (32, 32))
    q, k, v = random_inputs(1, 4, 2, 512, 512, 32, torch.float16, 3)
    config = replace(default_config(layout, 32), pack=pack, full_runs=True)
    out, lse = triton_sparse_attention(q, k, v, layout, max_chunk=3, heavy_first=True, config=config)
    assert_close_to_oracle(out, lse, q, k, v, mask)


def test_all_empty_layout_gives_zeros_and_neg_inf():
    mask = torch.zeros(1, 1, 64, 96, dtype=torch.bool)
    layout = BlockLayout.from_dense(mask, (32, 32))
    q, k, v = random_inputs(1, 2, 1, 64, 96, 32, torch.float16, 1)
    out, lse = triton_sparse_attention(q, k, v, layout)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()


@pytest.mark.parametrize("pack", [1, 2])
def test_work_list_covers_every_tile_once_heaviest_first(pack):
    q_pos, k = positions(256, 256)
    mask = ((k <= q_pos) & ((q_pos - k < 40) | (q_pos >= 200)))[None, None]
    layout = BlockLayout.from_dense(mask, (32, 32))
    work = work_list(layout, 2, 4, max_chunk=3, pack=pack)
    items = work.items.long()
    n_tiles = (layout.full_kv_num_blocks + layout.kv_num_blocks).view(-1).long()
    covered = torch.zeros(2, 4, layout.num_q_blocks, dtype=torch.long)
    slots = []
    full_start, part_start = layout.full_kv_start.view(-1), layout.kv_start.view(-1)
    blocks = layout.full_kv_indices.tolist()
    for b, h, qb, lrow, t0, t1, slot, stride, n_full, n_total, f_start, p_start, *runs in items.tolist():
        assert 0 <= t0 <= t1 <= n_tiles[lrow] and t1 - t0 <= 3 and h % pack == 0
        # The row facts copied into the item are the layout's.
        assert n_full == layout.full_kv_num_blocks.view(-1)[lrow] and n_total == n_tiles[lrow]
        assert f_start == full_start[lrow] and p_start == part_start[lrow]
        # Its first two runs give the blocks of their FULL positions; the first is maximal.
        lo, hi = min(t0, n_full), min(t1, n_full)
        a_end, a_base, b_end, b_base = runs
        assert lo <= a_end <= b_end <= hi and (a_end > lo or lo == hi)
        assert all(blocks[f_start + i] == a_base + i for i in range(lo, a_end))
        assert all(blocks[f_start + i] == b_base + i for i in range(a_end, b_end))
        assert a_end == hi or blocks[f_start + a_end] != blocks[f_start + a_end - 1] + 1
        covered[b, h : h + pack, qb] += t1 - t0
        slots += [slot + p * stride for p in range(pack)] if slot >= 0 else []
    assert torch.equal(covered, n_tiles.view(1, 1, -1).expand(2, 4, -1))
    sizes = items[:, 5] - items[:, 4]
    assert (sizes[:-1] >= sizes[1:]).all()
    # Every head of every split chunk has its own slot, and the merges read exactly those.
    merged = [first + i for *_, first, count in work.merges.tolist() for i in range(count)]
    assert sorted(slots) == sorted(merged) == list(range(work.num_slots))


def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layout = BlockLayout.from_dense(torch.ones(1, 1, 32, 32, dtype=torch.bool), (32, 32))
    q, k, v = random_inputs(1, 1, 1, 32, 32, 32, torch.float16, 0)
    with pytest.raises(ValueError, match="CUDA"):
        triton_sparse_attention(q, k, v, layout)


def test_rejects_unsupported_block_size():
    layout = BlockLayout.from_dense(torch.ones(1, 1, 48, 64, dtype=torch.bool), (48, 64))
    q, k, v = random_inputs(1, 1, 1, 48, 64, 32, torch.float16, 0)
    with pytest.raises(ValueError, match="block_size"):
        triton_sparse_attention(q, k, v, layout)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"pack": 3}, "pack: expected 1, 2 or 4"),
        ({"max_registers": 16}, "max_registers: expected None or 24 to 255"),
        ({"q_in_registers": True, "tma": False}, "q_in_registers: needs tma=True"),
        ({"ping_pong": True}, "ping_pong: needs warp_specialized=True"),
        ({"warp_specialized": True, "tma": True}, "warp_specialized: expected tma=True, num_warps=4"),
        ({"warp_specialized": True, "num_warps": 4}, "warp_specialized: expected tma=True"),
        ({"warp_specialized": True, "num_warps": 4, "tma": True, "num_stages": 3}, "num_stages=2"),
        ({"warp_specialized": True, "num_warps": 4, "tma": True, "pack": 2}, "pack=1"),
        (
            {"warp_specialized": True, "num_warps": 4, "num_stages": 2, "tma": True, "max_registers": 128},
            "sets its own registers",
        ),
    ],
)
def test_kernel_config_rejects_bad_knobs(knobs, message):
    with pytest.raises(ValueError, match=message):
        KernelConfig(**knobs)


def test_short_rows_pack_a_gqa_group_on_hopper(monkeypatch):
    """Head-independent short-row layouts run two heads of a GQA group per program where TMA exists (the
    tile shape and the launch agree); odd groups, per-head layouts and devices without TMA run one head
    per program."""
    monkeypatch.setattr(launch_config, "_has_tma", lambda device: True)
    assert packable_heads(4, 128, per_head=False, device="cpu") == 2
    assert packable_heads(6, 128, per_head=False, device="cpu") == 2
    assert packable_heads(3, 128, per_head=False, device="cpu") == 1
    assert packable_heads(4, 128, per_head=True, device="cpu") == 1
    assert packable_heads(4, 32, per_head=False, device="cpu") == 1
    layout = lower(Triangle(8, 64, 32), 512, block_size=(32, 32))
    expected = KernelConfig(num_warps=4, num_stages=3, tma=True, pack=2, q_in_registers=True)
    assert default_config(layout, 128, group=4) == expected
    assert default_config(layout, 128, group=3).pack == 1
    wide = lower(Triangle(8, 64, 32), 512, block_size=(64, 64))
    assert default_config(wide, 128, group=4) == KernelConfig(
        num_warps=4, num_stages=3, tma=True, pack=2, full_runs=False
    )
    monkeypatch.setattr(launch_config, "_has_tma", lambda device: False)
    assert packable_heads(4, 128, per_head=False, device="cpu") == 1
    assert default_config(layout, 128, group=4).pack == 1


def test_warp_specialized_launch_where_it_applies(monkeypatch):
    """On Hopper, 128 x 128 layouts of fp16/bf16 inputs with head dim 64 or 128 and no gathered columns
    default to the warp-specialised Gluon kernel; anything else keeps Triton's
    launch, and asking for it anyway names the reason."""
    monkeypatch.setattr(launch_config, "_has_tma", lambda device: True)
    monkeypatch.setattr(launch_config, "_is_hopper", lambda device: True)
    layout = lower(Causal(), 1024, block_size=(128, 128))
    long_rows = lower(Causal(), 8192, block_size=(128, 128))  # 32.5 tiles per row on average
    assert default_config(long_rows, 128, group=4) == KernelConfig(4, 2, tma=True, warp_specialized=True)
    # Short rows (4.5 tiles on average; Triangle()'s about 6) run persistent.
    short = KernelConfig(4, 2, tma=True, warp_specialized=True, persistent=True)
    assert default_config(layout, 128, group=4) == short
    assert default_config(lower(Triangle(), 8192, block_size=(128, 128)), 128, group=4) == short
    assert default_config(layout, 64, dtype=torch.float16).warp_specialized
    assert default_config(lower(Causal(), 1000, 5003, block_size=(128, 128)), 128).warp_specialized
    cases = [
        (layout, 256, torch.bfloat16, "needs head dim 64 or 128, got 256"),
        (layout, 128, torch.float32, "needs float16 or bfloat16 inputs, got torch.float32"),
        (
            lower(Causal(), 1024, block_size=(64, 64)),
            128,
            torch.bfloat16,
            "needs 128 x 128 tiles, got a layout on (64, 64)",
        ),
    ]
    for other, dim, dtype, reason in cases:
        assert warp_specialized_unsupported(other, dim, dtype) == reason
        assert not default_config(other, dim, dtype=dtype).warp_specialized
    columns = with_columns(layout, torch.Generator().manual_seed(0), 24)
    assert warp_specialized_unsupported(columns, 128, torch.bfloat16) == "does not take gathered key columns"
    monkeypatch.setattr(launch_config, "_is_hopper", lambda device: False)
    assert warp_specialized_unsupported(layout, 128, torch.bfloat16).startswith("needs a Hopper GPU (sm_90)")
    assert default_config(layout, 128, group=4) == KernelConfig(num_warps=8, num_stages=3, tma=True)
    q, k, v = random_inputs(1, 2, 1, 1024, 1024, 128, torch.float16, 0)
    with pytest.raises(ValueError, match="config: warp_specialized needs a Hopper GPU"):
        triton_sparse_attention(q, k, v, layout, config=KernelConfig(4, 2, tma=True, warp_specialized=True))


def test_rejects_layout_of_other_lengths():
    layout = BlockLayout.from_dense(torch.ones(1, 1, 32, 64, dtype=torch.bool), (32, 32))
    q, k, v = random_inputs(1, 1, 1, 32, 96, 32, torch.float16, 0)
    with pytest.raises(ValueError, match="kv_len"):
        triton_sparse_attention(q, k, v, layout)


def test_preferred_block_size():
    assert preferred_block_size(128, torch.bfloat16) == (128, 128)
    assert preferred_block_size(64, torch.float16) == (128, 128)
    assert preferred_block_size(128, torch.bfloat16, row_tiles=4.0) == (64, 64)
    assert preferred_block_size(128, torch.bfloat16, row_tiles=4.0, pack=2) == (32, 32)
    assert preferred_block_size(128, torch.bfloat16, row_tiles=4.0, pack=2, warp_specialized=True) == (128, 128)
    assert preferred_block_size(128, torch.bfloat16, row_tiles=40.0, pack=2) == (128, 128)
    assert preferred_block_size(256, torch.bfloat16, row_tiles=4.0, pack=2) == (64, 64)
    with pytest.raises(ValueError, match="head_dim"):
        preferred_block_size(96, torch.float16)


@SETTINGS
@given(
    pattern=st.one_of(patterns(max_len=200, max_leaves=4), per_head_patterns(max_len=200)),
    lens=lengths(max_len=200),
    block=st.tuples(st.sampled_from([32, 64]), st.sampled_from([32, 64])),
    group=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float16, torch.float32]),
    seed=st.integers(0, 999),
)
def test_lowered_patterns_match_oracle(pattern, lens, block, group, dtype, seed):
    """Random composed patterns, lowered as `sparse_attention` lowers them, against their token truth."""
    q_len, kv_len = lens
    heads = pattern.num_heads or 2
    kv_heads = heads // group if heads % group == 0 else heads
    layout = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads)
    q, k, v = random_inputs(1, heads, kv_heads, q_len, kv_len, 32, dtype, seed)
    out, lse = triton_sparse_attention(q, k, v, layout, max_chunk=2)
    mask = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads).unsqueeze(0)
    assert_close_to_oracle(out, lse, q, k, v, mask)


@pytest.mark.parametrize("pack", [1, 2])
def test_tma_loads_accept_misaligned_and_strided_views(pack):
    """Tensor descriptors need a 16-byte aligned base and strides; views starting one element in, and
    queries in the [B, S, H, D] order of a model's projections, must still work."""
    _, _, v = random_inputs(1, 2, 1, 64, 64, 32, torch.float16, 3)
    k = torch.randn(64 * 32 + 1).to(torch.float16)[1:].view(1, 1, 64, 32)
    q_misaligned = torch.randn(2 * 64 * 32 + 1).to(torch.float16)[1:].view(1, 2, 64, 32)
    q_strided = torch.randn(1, 64, 2, 32).to(torch.float16).transpose(1, 2)
    mask = torch.ones(64, 64, dtype=torch.bool).tril()[None, None]
    layout = BlockLayout.from_dense(mask, (32, 32))
    config = replace(default_config(layout, 32), tma=True, pack=pack, q_in_registers=True)
    for q in (q_misaligned, q_strided):
        out, lse = triton_sparse_attention(q, k, v, layout, config=config)
        assert_close_to_oracle(out, lse, q, k, v, mask)


def test_warp_specialized_launch_wiring(monkeypatch):
    """Gluon cannot run here, so this checks what the warp-specialised launch hands its kernel: each
    argument bound to the parameter it is meant for (the layout's lists, sizes, strides, flags)."""
    calls = []

    class Recorder:
        fn = gluon_fwd._gluon_fwd_kernel.fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    monkeypatch.setattr(launch_config, "_is_hopper", lambda device: True)
    monkeypatch.setattr(gluon_fwd, "_gluon_fwd_kernel", Recorder())
    layout = lower(Triangle(8, 256, 128), 1000, 1100, block_size=(128, 128))
    q, k, v = random_inputs(2, 4, 2, 1000, 1100, 64, torch.float16, 0)
    config = KernelConfig(4, 2, tma=True, warp_specialized=True, ping_pong=True)
    triton_sparse_attention(q, k, v, layout, config=config, max_chunk=0, heavy_first=True)

    ((grid, args, kwargs),) = calls
    bound = inspect.signature(Recorder.fn).bind(
        *args, **{k: v for k, v in kwargs.items() if k not in ("num_warps", "maxnreg")}
    )
    work = work_list(layout, 2, 4, max_chunk=0, heavy_first=True)
    assert grid == (work.items.shape[0],)
    got = bound.arguments
    assert torch.equal(got["WORK"], work.items) and got["stride_work"] == work.items.stride(0)
    for name, expected in (("FULL_IDX", layout.full_kv_indices), ("PART_IDX", layout.kv_indices),
                           ("PART_MID", layout.kv_mask_ids), ("TILE_MASKS", layout.tile_masks)):  # fmt: skip
        assert torch.equal(got[name], expected), name
    assert (got["q_len"], got["kv_len"], got["heads"], got["group"], got["kv_heads"]) == (1000, 1100, 4, 2, 2)
    assert (got["STAGES"], got["PING_PONG"], got["EVEN_KV"], got["n_items"]) == (2, True, False, work.items.shape[0])
    assert got["k_desc"].block_shape == [1, 128, 64] and got["q_desc"].block_shape == [gluon_fwd.HALF_ROWS, 64]
    assert got["o_desc"].block_shape == [1, 1, gluon_fwd.HALF_ROWS, 64] and list(got["o_desc"].shape) == [
        2,
        4,
        1000,
        64,
    ]
    assert kwargs["num_warps"] == 4 and kwargs["maxnreg"] == gluon_fwd.MAX_REGISTERS


def test_short_rows_take_the_warp_specialized_launch_from_8k_keys(monkeypatch):
    """On Hopper, Triangle()'s short rows lower on 128 x 128 tiles for the persistent warp-specialised
    launch from WARP_SPECIALIZED_SHORT_ROWS_FROM keys, and keep 32 x 32 tiles below (where they measured
    faster); other GPUs with TMA keep 32 x 32 tiles at every length."""
    monkeypatch.setattr(launch_config, "_has_tma", lambda device: True)
    monkeypatch.setattr(launch_config, "_is_hopper", lambda device: True)
    long_prompt = launch_config.WARP_SPECIALIZED_SHORT_ROWS_FROM
    assert default_block_size("triton", 128, torch.bfloat16, Triangle(), long_prompt, long_prompt, group=4) == (
        128,
        128,
    )
    short_prompt = long_prompt // 2
    assert default_block_size("triton", 128, torch.bfloat16, Triangle(), short_prompt, short_prompt, group=4) == (
        32,
        32,
    )
    assert default_block_size("triton", 128, torch.float32, Triangle(), long_prompt, long_prompt, group=4) == (64, 64)
    monkeypatch.setattr(launch_config, "_is_hopper", lambda device: False)
    assert default_block_size("triton", 128, torch.bfloat16, Triangle(), long_prompt, long_prompt, group=4) == (32, 32)
