"""The block-sparse Triton kernel equals the fp64 oracle at real sizes on the GPU (bf16 and fp16).

Patterns are lowered on the device exactly as `sparse_attention` lowers them; the oracle mask is the
pattern's token truth, so these tests hold lowering and kernel together to the definition.
"""

from __future__ import annotations

import pytest
import torch

from sparseattn.attention import default_block_size
from sparseattn.kernels.triton_fwd import KernelConfig, preferred_block_size, triton_sparse_attention
from sparseattn.patterns import AShape, Causal, LastQueries, PerHead, Streaming, Triangle
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
    layout = pattern.lower(q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda")
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
def test_short_rows_default_launch(q_len, kv_len, max_chunk):
    """What sparse_attention picks for short rows on Hopper: 32 x 32 tiles, two query heads of a GQA group
    per program, the query block in registers (loaded through a tensor descriptor, zero past q_len), FULL
    runs; ragged lengths and split rows included."""
    assert default_block_size("triton", 128, torch.bfloat16, Triangle(), 8192, 8192, group=4, device="cuda") == (32, 32)
    run(PATTERNS["triangle"], 1, 16, 4, q_len, kv_len, 128, torch.bfloat16, (32, 32), max_chunk=max_chunk)


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("pack", [1, 2])
@pytest.mark.parametrize(("name", "block"), [("triangle", (32, 32)), ("streaming", (32, 32)), ("causal", (128, 128))])
def test_query_block_in_registers(name, block, pack, dim):
    """The query block through a tensor descriptor (rows past q_len zero-filled), kept in registers:
    batch 2, GQA, q_len < kv_len with ragged tails, split rows merged per head."""
    config = KernelConfig(4 if block[0] == 32 else 8, 3, tma=True, pack=pack, q_in_registers=True)
    run(PATTERNS[name], 2, 8, 2, 1000, 5003, dim, torch.bfloat16, block, config=config, max_chunk=4)
