"""Lowering on the GPU: the row-segment path on CUDA gives the CPU's layout, and the per-tile oracle's."""

from __future__ import annotations

import pytest
import torch

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Columns, Documents, PerHead, Streaming, Triangle, Window
from sparseattn.testing import layouts_differ

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PATTERNS = {
    "causal": Causal(),
    "streaming": Streaming(128, 4096),
    "ashape": AShape(1, 32, 128),
    "triangle": Triangle(),
    "mixture": PerHead(
        tuple([Causal(), Streaming(128, 4096), AShape(1, 32, 128), Triangle()][h % 4] for h in range(32))
    ),
    "columns": Causal() & (Columns(tuple(range(0, 30000, 97))) | Window(1000)),
    "documents": Causal() & Documents(tuple(range(1000, 32768, 1000))),
}


def _equal(a, b) -> None:
    differs = layouts_differ(a, b)
    assert differs is None, f"layouts differ in {differs}"


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("block", [(64, 64), (128, 128)])
def test_cuda_lowering_equals_cpu_and_tile_by_tile(name, block):
    pattern = PATTERNS[name]
    q_len, kv_len = 30000, 32768  # ragged tails, a chunk of queries at the end of the prompt
    on_gpu = lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda")
    assert on_gpu.device.type == "cuda"
    _equal(on_gpu, lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads))
    _equal(
        on_gpu,
        lower(pattern, q_len, kv_len, block_size=block, num_heads=pattern.num_heads, device="cuda", by_segments=False),
    )
