"""The backward kernels equal fp64 autograd through the oracle at real sizes on the GPU (bf16 and fp16).

Patterns are lowered on the device exactly as `sparse_attention` lowers them; the oracle mask is the
pattern's token truth. Tolerances are derived from autograd through plain attention in the inputs'
precision (`sparseattn.testing.gradients`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_kernel_gpu import PATTERNS  # the forward GPU tests' named patterns, run backward here

from sparseattn.attention import sparse_attention
from sparseattn.kernels.attention.backward import default_backward_config, triton_sparse_attention_backward
from sparseattn.kernels.attention.config import preferred_block_size
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Columns, Triangle, Window
from sparseattn.testing.gradients import assert_grads_close_to_oracle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype):
    gen = torch.Generator(device="cuda").manual_seed(q_len * 31 + kv_len)
    q = torch.randn(batch, heads, q_len, dim, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(batch, kv_heads, kv_len, dim, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(batch, kv_heads, kv_len, dim, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn(batch, heads, q_len, dim, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, dout


def run(pattern, batch, heads, kv_heads, q_len, kv_len, dim, dtype, block=None, flags=None):
    q, k, v, dout = inputs(batch, heads, kv_heads, q_len, kv_len, dim, dtype)
    block = block or preferred_block_size(dim, dtype)
    layout = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda")
    out, lse = triton_sparse_attention(q, k, v, layout)
    config = replace(default_backward_config(layout, dim), **flags) if flags else None
    grads = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout, config=config)
    mask = pattern.to_dense(q_len, kv_len, num_heads=pattern.num_heads).unsqueeze(0).cuda()
    assert_grads_close_to_oracle(grads, q, k, v, mask, dout)


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_patterns_at_4k_gqa(name, dtype):
    run(PATTERNS[name], 1, 8, 2, 4096, 4096, 128, dtype)


@pytest.mark.parametrize("block", [(32, 32), (64, 64), (128, 128)])
@pytest.mark.parametrize("dim", [64, 128])
def test_triangle_tile_shapes_and_head_dims(block, dim):
    run(Triangle(), 1, 8, 2, 4096, 4096, dim, torch.bfloat16, block=block)


@pytest.mark.parametrize("name", ["causal", "triangle"])
def test_8k_gqa4(name):
    run(PATTERNS[name], 1, 4, 1, 8192, 8192, 128, torch.bfloat16)


@pytest.mark.parametrize(
    "flags",
    [
        # The default is key-major with one loop over (tile, 64-row step); each flag is checked against
        # it, and the query-major unrolled shapes it replaced still work.
        {"key_major": False, "flat_steps": False, "sub_m": 32},
        {"key_major": False, "flat_steps": True, "sub_m": 32},
        # Key-major with unrolled row steps at two dK/dV stages needs 257 KiB of shared memory on an H100
        # (a program may take 227 KiB), so it is checked at one stage, where it fits (tests/test_kernel_resources.py
        # compiles it offline as a launch specialises it).
        {"flat_steps": False, "sub_m": 32, "dkdv_stages": 1},
        {"dq_atomic": True},
        {"tma": True},
        {"max_chunk": 2},
        {"dq_atomic": True, "max_chunk": 3, "dkdv_stages": 1},
    ],
    ids=lambda flags: "+".join(f"{k}={v}" for k, v in flags.items()),
)
@pytest.mark.parametrize("name", ["causal", "triangle"])
def test_backward_flags_compile_and_match(name, flags):
    """Each `BackwardConfig` flag on the default tiles and knobs, compiled for this GPU, ragged lengths."""
    run(PATTERNS[name], 1, 8, 2, 4000, 4000, 128, torch.bfloat16, flags=flags)


def test_chunked_prefill_ragged_batch2():
    """q_len < kv_len, neither a multiple of the tiles, batch 2."""
    run(Triangle(sink=8, window=512, last=128), 2, 4, 2, 3000, 5003, 128, torch.bfloat16)


def test_gathered_columns():
    pattern = Causal() & (Window(512) | Columns(tuple(range(700, 4000, 97))))
    q, k, v, dout = inputs(1, 4, 2, 4096, 4096, 128, torch.bfloat16)
    layout = lower(pattern, 4096, 4096, block_size=(64, 64), device="cuda")
    assert layout.has_columns
    out, lse = triton_sparse_attention(q, k, v, layout)
    grads = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    mask = pattern.to_dense(4096, 4096).view(1, 1, 4096, 4096).cuda()
    assert_grads_close_to_oracle(grads, q, k, v, mask, dout)


def test_deterministic_on_the_gpu():
    q, k, v, dout = inputs(1, 8, 2, 4096, 4096, 128, torch.bfloat16)
    layout = lower(Triangle(), 4096, 4096, block_size=(64, 64), device="cuda")
    out, lse = triton_sparse_attention(q, k, v, layout)
    first = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    second = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("impl", ["triton", "flex", "reference"])
def test_sparse_attention_is_differentiable(impl):
    """Through `sparse_attention`: the Triton autograd function, FlexAttention's own backward, the oracle."""
    pattern = Triangle(sink=64, window=256, last=64)
    q, k, v, dout = inputs(1, 8, 2, 2048, 2048, 128, torch.bfloat16)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    sparse_attention(*leaves, pattern, impl=impl).backward(dout)
    mask = pattern.to_dense(2048, 2048).view(1, 1, 2048, 2048).cuda()
    assert_grads_close_to_oracle((leaves[0].grad, leaves[1].grad, leaves[2].grad), q, k, v, mask, dout)
