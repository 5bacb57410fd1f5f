"""The Triton walk of MInference's slash windows equals its torch oracle at real sizes on the GPU, and the
minference-form layout built from it equals the one built from the oracle's runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from sparseattn.estimation import VerticalSlashIndices
from sparseattn.estimation.topk import PAD
from sparseattn.estimation.vs_indices import torch_minference_runs
from sparseattn.kernels.estimation.triton_minference_runs import triton_minference_runs
from sparseattn.lowering import lower

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def lines(n: int, heads: int, vertical: int, slash: int) -> VerticalSlashIndices:
    gen = torch.Generator().manual_seed(n)
    cols = [sorted(torch.randperm(n, generator=gen)[:vertical].tolist()) for _ in range(heads)]
    diags = [
        sorted([*range(64), *(64 + torch.randperm(n - 64, generator=gen)[: slash - 64]).tolist()]) for _ in range(heads)
    ]
    return VerticalSlashIndices(torch.tensor(cols), torch.tensor(diags), form="minference", block_size=64)


@pytest.mark.parametrize("n,first", [(32768, 0), (8192, 37)])
def test_triton_walk_equals_the_oracle(n, first):
    pattern = lines(n, 14, 1000, 6096)
    got = triton_minference_runs(pattern.slash.cuda(), 64, n // 64, first, pad=PAD)
    want = torch_minference_runs(pattern.slash, 64, n // 64, first)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want, strict=True))


def test_layout_from_the_gpu_walk_equals_the_cpu_one():
    pattern = lines(8192, 4, 1000, 2000)
    on_gpu = lower(pattern.to("cuda"), 8192, block_size=(64, 64), device="cuda")
    on_cpu = lower(pattern, 8192, block_size=(64, 64))
    assert torch.equal(on_gpu.to_dense().cpu(), on_cpu.to_dense())
