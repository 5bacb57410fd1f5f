"""Dynamic patterns on the GPU at real sizes: estimate + lower + attention without host sync, layouts exact, kernel == oracle."""

from __future__ import annotations

import pytest
import torch

from sparseattn.attention import sparse_attention
from sparseattn.estimation import BlockTopK, VerticalSlash
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.testing.tolerance import assert_close_to_oracle

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _qkv(heads, kv_heads, length, dim=128, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn(1, h, length, dim, device="cuda", generator=gen).to(dtype)
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("pattern", [VerticalSlash(512, 2048), BlockTopK(32)], ids=repr)
def test_estimate_lower_and_attend_never_sync(pattern):
    q, k, v = _qkv(32, 8, 32768)
    # The kernel entry: sparse_attention adds one host wait, its finiteness check of q, k, v (check_finite).
    attend = lambda: triton_sparse_attention(q, k, v, lower(pattern.estimate(q, k), 32768, 32768))
    attend()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        attend()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("pattern", [VerticalSlash((100, 300, 31, 64), (2000, 101, 500, 900)), BlockTopK(8)], ids=repr)
def test_layout_is_exact_and_kernel_matches_oracle(pattern):
    q, k, v = _qkv(4, 2, 6000, seed=1)
    concrete = pattern.estimate(q, k)
    layout = lower(concrete, 6000, 6000)
    mask = concrete.to_dense(6000, 6000)
    assert torch.equal(layout.to_dense()[0], mask)
    out, lse = sparse_attention(q, k, v, layout, impl="triton", return_lse=True)
    assert_close_to_oracle(out, lse, q, k, v, mask.unsqueeze(0))


def test_gpu_estimate_equals_cpu_estimate():
    """Equal selections, except that a line whose CPU score is within fp32 summation error of the budget's
    boundary may be swapped for another such line: the CUDA line sums add the same probabilities in
    another order (`triton_line_sums`)."""
    from sparseattn.estimation.topk import PAD
    from sparseattn.estimation.vs_scores import line_sums

    q, k, _ = _qkv(8, 2, 4096, dtype=torch.float32, seed=2)
    vs = VerticalSlash(300, 1000)
    gpu, cpu = vs.estimate(q, k), vs.estimate(q.cpu(), k.cpu())
    columns, diagonals = line_sums(q.cpu(), k.cpu(), vs.last_q, vs.scale)
    for got, want, scores, budget, forced in (
        (gpu.vertical.cpu(), cpu.vertical, columns, vs.vertical, vs.sink_columns),
        (gpu.slash.cpu(), cpu.slash, diagonals, vs.slash, vs.local_diagonals),
    ):
        for h in range(scores.shape[0]):
            boundary = scores[h].clone().index_fill_(0, torch.arange(forced), float("inf")).topk(budget).values[-1]
            chosen, expected = set(got[h].tolist()) - {PAD}, set(want[h].tolist()) - {PAD}
            assert len(chosen) == len(expected) == budget
            swapped = torch.tensor(sorted(chosen ^ expected), dtype=torch.long)
            assert ((scores[h, swapped] - boundary).abs() <= 1e-5 * boundary).all(), (h, swapped.tolist())


def test_triton_top_k_selection_equals_torch_rule_at_128k_size():
    """The block top-k grid of a 128K prompt: [32, 2048, 2048] scores with ties, +-inf and per-head budgets."""
    from sparseattn.estimation.topk import select_top
    from sparseattn.kernels.estimation.triton_topk import triton_select_top

    gen = torch.Generator(device="cuda").manual_seed(3)
    scores = torch.randint(-50, 50, (32, 2048, 2048), device="cuda", generator=gen).float()
    scores[:, :, :7] = float("inf")
    scores.tril_(0).masked_fill_(scores == 0, float("-inf"))
    k = torch.randint(1, 200, (32, 1), device="cuda", generator=gen)
    assert torch.equal(triton_select_top(scores, k), select_top(scores, k, int(k.max())))


def test_block_topk_gpu_estimate_equals_cpu_estimate():
    """Triton pooling, causal-half scores and fused selection against the torch path on the CPU."""
    q, k, _ = _qkv(8, 2, 4000, dtype=torch.float32, seed=4)
    bt = BlockTopK((5, 9, 3, 12, 7, 7, 20, 1))
    gpu, cpu = bt.estimate(q, k), bt.estimate(q.cpu(), k.cpu())
    assert torch.equal(gpu.tiles.cpu(), cpu.tiles)


def test_triton_block_topk_keep_equals_masked_rule_at_128k_size():
    from sparseattn.estimation.block_topk import reachable_blocks
    from sparseattn.estimation.topk import select_top
    from sparseattn.kernels.estimation.triton_topk import triton_block_topk_keep

    gen = torch.Generator(device="cuda").manual_seed(5)
    scores = torch.randint(-50, 50, (32, 2048, 2048), device="cuda", generator=gen).float()
    k = torch.randint(1, 200, (32, 1), device="cuda", generator=gen)
    n = 2048 * 64 - 17  # ragged last block
    reach, forced = reachable_blocks(n - 1000, n, 64, scores.device)
    masked = scores[:, : reach.shape[0]].masked_fill(~reach, float("-inf")).masked_fill(forced, float("inf"))
    expected = (select_top(masked, k, int(k.max())) & reach) | forced
    assert torch.equal(triton_block_topk_keep(scores[:, : reach.shape[0]].contiguous(), k, n - 1000, n, 64), expected)
