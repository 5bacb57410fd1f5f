"""The block-sparse Triton kernel equals the fp64 oracle at real sizes on the GPU (bf16 and fp16).

Patterns are lowered on the device exactly as `sparse_attention` lowers them; the oracle mask is the
pattern's token truth, so these tests hold lowering and kernel together to the definition.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseattn.attention import default_block_size
from sparseattn.kernels.attention import gluon_fwd, launch
from sparseattn.kernels.attention.config import (
    WARP_SPECIALIZED_SHORT_ROWS_FROM,
    KernelConfig,
    default_config,
    preferred_block_size,
)
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, LastQueries, PerHead, Streaming, Triangle
from sparseattn.testing.strategies import patterns
from sparseattn.testing.tolerance import assert_close_to_oracle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PATTERNS = {
    "causal": Causal(),
    "streaming": Streaming(sink=128, window=1024),
    "ashape": AShape(sink_blocks=1, local_blocks=8, block_size=128),
    "triangle": Triangle(),
    "mixture": PerHead((Causal(), Streaming(sink=128, window=1024), Triangle(), AShape()) * 2),
}


def run(pattern, batch, heads, kv_heads, q_len, kv_len, dim, dtype, block=None, **kwargs):
    gen = torch.Generator(device="cuda").manual_seed(q_len * 31 + kv_len)
    q = torch.randn(batch, heads, q_len, dim, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(batch, kv_heads, kv_len, dim, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(batch, kv_heads, kv_len, dim, device="cuda", dtype=dtype, generator=gen)
    block = block or preferred_block_size(dim, dtype)
    layout = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda")
    out, lse = triton_sparse_attention(q, k, v, layout, **kwargs)
    mask = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads).unsqueeze(0).cuda()
    assert_close_to_oracle(out, lse, q, k, v, mask)


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_patterns_at_4k_gqa(name, dtype):
    run(PATTERNS[name], 2, 8, 2, 4096, 4096, 128, dtype)


@pytest.mark.parametrize("name", ["causal", "triangle", "mixture"])
def test_chunked_prefill_ragged_head_dim_64(name):
    run(PATTERNS[name], 1, 8, 4, 1000, 5003, 64, torch.bfloat16)


@pytest.mark.parametrize("name", ["causal", "triangle", "mixture"])
@pytest.mark.parametrize("config", [KernelConfig(8, 3, tma=True), KernelConfig(4, 2, tma=True)])
def test_tensor_descriptor_loads_ragged(name, config):
    """TMA loads: ragged kv_len reads the next head's rows, which must stay out of every output."""
    run(PATTERNS[name], 2, 8, 2, 1000, 5003, 128, torch.bfloat16, config=config)


@pytest.mark.parametrize("max_chunk", [0, 4])
def test_split_rows_and_plain_grid(max_chunk):
    run(PATTERNS["triangle"], 1, 8, 8, 8192, 8192, 128, torch.bfloat16, max_chunk=max_chunk, heavy_first=max_chunk > 0)


@pytest.mark.parametrize("pack", [2, 4])
@pytest.mark.parametrize("name", ["causal", "streaming", "triangle"])
@pytest.mark.parametrize("max_chunk", [None, 4])
def test_heads_packed_per_program(name, pack, max_chunk):
    """Query heads of one kv head in one program, ragged lengths, split rows merged per head."""
    config = KernelConfig(8, 3, pack=pack)
    run(PATTERNS[name], 2, 8, 2, 1000, 5003, 128, torch.bfloat16, (64, 64), config=config, max_chunk=max_chunk)


def test_empty_rows_give_zero_and_neg_inf():
    pattern = Causal() & LastQueries(1000)  # the first 3096 rows attend to nothing
    run(pattern, 1, 4, 1, 4096, 4096, 128, torch.bfloat16)


@pytest.mark.parametrize(("q_len", "kv_len", "max_chunk"), [(8192, 8192, None), (1000, 5003, None), (8192, 8192, 4)])
def test_short_rows_default_launch(q_len, kv_len, max_chunk, poisoned):
    """What sparse_attention picks for short rows: on Hopper 128 x 128 tiles from
    WARP_SPECIALIZED_SHORT_ROWS_FROM keys, the warp-specialised launch persistent, and 32 x 32 below;
    ragged lengths and split rows included."""
    keys = WARP_SPECIALIZED_SHORT_ROWS_FROM
    block = default_block_size("triton", 128, torch.bfloat16, Triangle(), keys, keys, group=4, device="cuda")
    if torch.cuda.get_device_capability()[0] == 9:
        assert block == (128, 128)
        below = default_block_size(
            "triton", 128, torch.bfloat16, Triangle(), keys // 2, keys // 2, group=4, device="cuda"
        )
        assert below == (32, 32)
        layout = lower(Triangle(), q_len, kv_len, block_size=block, device="cuda")
        assert default_config(layout, 128, group=4) == KernelConfig(
            4, 2, tma=True, warp_specialized=True, persistent=True
        )
    run(PATTERNS["triangle"], 1, 16, 4, q_len, kv_len, 128, torch.bfloat16, block, max_chunk=max_chunk)


@pytest.mark.parametrize(("q_len", "kv_len", "max_chunk"), [(8192, 8192, None), (1000, 5003, None), (8192, 8192, 4)])
def test_small_tiles_two_heads_per_program(q_len, kv_len, max_chunk):
    """The short-row launch of GPUs with TMA but without the warp-specialised kernel: 32 x 32 tiles, two
    query heads of a GQA group per program, the query block in registers (loaded through a tensor
    descriptor, zero past q_len), FULL runs."""
    run(PATTERNS["triangle"], 1, 16, 4, q_len, kv_len, 128, torch.bfloat16, (32, 32), max_chunk=max_chunk)


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("pack", [1, 2])
@pytest.mark.parametrize(("name", "block"), [("triangle", (32, 32)), ("streaming", (32, 32)), ("causal", (128, 128))])
def test_query_block_in_registers(name, block, pack, dim):
    """The query block through a tensor descriptor (rows past q_len zero-filled), kept in registers:
    batch 2, GQA, q_len < kv_len with ragged tails, split rows merged per head."""
    config = KernelConfig(4 if block[0] == 32 else 8, 3, tma=True, pack=pack, q_in_registers=True)
    run(PATTERNS[name], 2, 8, 2, 1000, 5003, dim, torch.bfloat16, block, config=config, max_chunk=4)


WARP_SPECIALIZED = {
    f"{stages} stages{', ping-pong' if ping_pong else ''}{', persistent' if persistent else ''}": KernelConfig(
        4, stages, tma=True, warp_specialized=True, ping_pong=ping_pong, persistent=persistent
    )
    for stages in (2,)
    for ping_pong in (False, True)
    for persistent in (False, True)
}


@pytest.fixture
def few_programs(monkeypatch):
    """Persistent launches on 7 programs: each then runs many work items, of every length, through the
    same barriers (at real sizes one per multiprocessor)."""
    monkeypatch.setattr(gluon_fwd, "resident_programs", lambda device: 7)


@pytest.fixture
def poisoned(monkeypatch):
    """Every output and scratch buffer starts as NaN, so an unwritten row cannot pass as correct."""
    original = launch._new_outputs
    monkeypatch.setattr(launch, "_new_outputs", lambda *a: tuple(t.fill_(math.nan) for t in original(*a)))


def test_warp_specialized_is_the_default_for_long_rows():
    for q_len, kv_len in ((4096, 4096), (1000, 5003)):
        layout = lower(Causal(), q_len, kv_len, block_size=(128, 128), device="cuda")
        assert default_config(layout, 128, group=4, dtype=torch.bfloat16).warp_specialized
    assert not default_config(lower(Causal(), 4096, block_size=(64, 64), device="cuda"), 128).warp_specialized


@pytest.mark.parametrize("config", list(WARP_SPECIALIZED.values()), ids=list(WARP_SPECIALIZED))
@pytest.mark.parametrize("name", list(PATTERNS))
def test_warp_specialized(name, config, poisoned, few_programs):
    """The Gluon kernel: batch 2, GQA 4:1, chunked prefill (q_len < kv_len, both ragged), rows split
    into chunks merged by lse, per-head layouts."""
    run(PATTERNS[name], 2, 8, 2, 1000, 5003, 128, torch.bfloat16, (128, 128), config=config, max_chunk=4)


@pytest.mark.parametrize("programs", [1, 5, 7])
def test_persistent_launch_is_deterministic(programs, monkeypatch):
    """Each program refills the query block and the K/V stages while its warpgroups still read them; a
    missing ordering there shows as outputs that differ between identical calls."""
    monkeypatch.setattr(gluon_fwd, "resident_programs", lambda device: programs)
    gen = torch.Generator(device="cuda").manual_seed(programs)
    q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(2, 2, 5003, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(2, 2, 5003, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    layout = lower(Triangle(), 1000, 5003, block_size=(128, 128), device="cuda")
    config = KernelConfig(4, 2, tma=True, warp_specialized=True, persistent=True)
    first, first_lse = triton_sparse_attention(q, k, v, layout, config=config, max_chunk=4)
    for _ in range(100):
        out, lse = triton_sparse_attention(q, k, v, layout, config=config, max_chunk=4)
        assert torch.equal(out, first) and torch.equal(lse, first_lse)


@pytest.mark.parametrize("kv_len", [4992, 5003, 4097])
def test_warp_specialized_ragged_keys_stay_in_their_head(kv_len, poisoned):
    """A ragged last key block lies next to the following kv head's first keys; non-finite values there
    must reach no output of this head (K/V are read in boxes of one head, zero past kv_len)."""
    gen = torch.Generator(device="cuda").manual_seed(kv_len)
    q = torch.randn(1, 8, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, 2, kv_len, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, 2, kv_len, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k[:, 1], v[:, 1] = float("inf"), float("nan")
    pattern = PATTERNS["mixture"]
    layout = lower(pattern, 1000, kv_len, block_size=(128, 128), num_heads=pattern.num_heads, device="cuda")
    out, lse = triton_sparse_attention(q, k, v, layout, config=WARP_SPECIALIZED["2 stages"], max_chunk=4)
    mask = pattern.to_dense(1000, kv_len, num_heads=pattern.num_heads).unsqueeze(0).cuda()
    assert_close_to_oracle(out[:, :4], lse[:, :4], q[:, :4], k[:, :1], v[:, :1], mask[:, :4])


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 1)])
def test_warp_specialized_dtypes_head_dims_groups(dim, dtype, heads, kv_heads, poisoned):
    config = WARP_SPECIALIZED["2 stages, ping-pong, persistent"]
    run(PATTERNS["mixture"] if heads == 8 else Causal(), 1, heads, kv_heads, 4096, 4096, dim, dtype, (128, 128),
        config=config)  # fmt: skip


def test_warp_specialized_empty_rows(poisoned):
    run(Causal() & LastQueries(1000), 1, 4, 1, 4096, 4096, 128, torch.bfloat16, (128, 128),
        config=WARP_SPECIALIZED["2 stages"])  # fmt: skip


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_warp_specialized_matches_oracle_on_random_patterns(data, poisoned, few_programs):
    """Random compositions of the pattern algebra, random lengths, GQA, split rows and every launch of
    the Gluon kernel."""
    pattern = data.draw(patterns(max_len=2048), "pattern")
    kv_len = data.draw(st.one_of(st.integers(1, 2048), st.integers(1, 16).map(lambda blocks: 128 * blocks)), "kv_len")
    q_len = data.draw(st.one_of(st.just(kv_len), st.integers(1, kv_len)), "q_len")
    kv_heads = data.draw(st.sampled_from([1, 2]), "kv_heads")
    heads = kv_heads * data.draw(st.sampled_from([1, 4]), "group")
    config = data.draw(st.sampled_from(list(WARP_SPECIALIZED.values())), "config")
    max_chunk = data.draw(st.sampled_from([None, 0, 2]), "max_chunk")
    batch = data.draw(st.sampled_from([1, 2]), "batch")
    args = (pattern, batch, heads, kv_heads, q_len, kv_len, 128, torch.bfloat16, (128, 128))
    if lower(pattern, q_len, kv_len, block_size=(128, 128), device="cuda").col_num is not None:
        with pytest.raises(ValueError, match="does not take gathered key columns"):
            run(*args, config=config, max_chunk=max_chunk)
    else:
        run(*args, config=config, max_chunk=max_chunk)


def test_warp_specialized_refuses_what_it_does_not_take():
    q = torch.randn(1, 4, 1024, 128, device="cuda", dtype=torch.bfloat16)
    layout = lower(Causal(), 1024, block_size=(64, 64), device="cuda")
    with pytest.raises(ValueError, match=r"warp_specialized needs 128 x 128 tiles, got a layout on \(64, 64\)"):
        triton_sparse_attention(q, q, q, layout, config=WARP_SPECIALIZED["2 stages"])
