"""The Triton slash-tile grid equals its torch oracle at real sizes on the GPU, and the block-form layout
lowered on the GPU (through it) equals the one lowered on the CPU."""

from __future__ import annotations

import pytest
import torch

from sparseattn.estimation import VerticalSlash
from sparseattn.lowering import lower

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("n,q_len", [(32768, 32768), (131072, 131072), (32768, 4000)])
def test_kernel_grid_equals_the_torch_grid(n, q_len):
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(1, 14, q_len, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, 2, n, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    lines = VerticalSlash(512, 2048).estimate(q, k)
    assert torch.equal(lines.tile_grid(q_len, n), lines.torch_tile_grid(q_len, n))


def test_block_form_layout_on_the_gpu_equals_the_cpu_one():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 4, 8192, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, 2, 8192, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    lines = VerticalSlash(256, 1024).estimate(q, k)
    on_gpu = lower(lines, 8192, 8192, device="cuda").to_dense().cpu()
    on_cpu = lower(lines.to("cpu"), 8192, 8192, device="cpu").to_dense()
    assert torch.equal(on_gpu, on_cpu)
