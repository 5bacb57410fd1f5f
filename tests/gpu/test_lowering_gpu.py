"""Lowering on the GPU: the row-segment path on CUDA gives the CPU's layout, and the per-tile oracle's."""

from __future__ import annotations

import pytest
import torch

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Columns, Documents, PerHead, Streaming, Triangle, Window

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
    for name in ("full_kv_num_blocks", "full_kv_start", "full_kv_indices", "kv_num_blocks", "kv_start", "kv_indices"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name
    bits_a = a.tile_masks[a.kv_mask_ids.long()].cpu()
    bits_b = b.tile_masks[b.kv_mask_ids.long()].cpu()
    assert torch.equal(bits_a, bits_b)
    for name in ("col_num", "col_start", "col_indices"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x.cpu(), y.cpu())), name


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
