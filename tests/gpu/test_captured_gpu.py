"""`CapturedEstimates` on the GPU: a replay on new q and k gives the layout that estimating and lowering
them directly gives, and a schedule with captured estimates attends as one without."""

from __future__ import annotations

import pytest
import torch

from sparseattn.attention import sparse_attention
from sparseattn.estimation import BlockTopK, CapturedEstimates, VerticalSlash, VerticalSlashMass
from sparseattn.lowering import lower
from sparseattn.schedule import LayerSchedule

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Per-head budgets included: their device copies come from a shared cache, which the capture holds.
PATTERNS = [
    VerticalSlash(64, 256),
    VerticalSlash((64, 32, 128, 64), (256, 128, 64, 256)),
    VerticalSlashMass(0.9),
    BlockTopK(8),
]


def _qkv(heads, kv_heads, length, seed, dim=64, dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn(1, h, length, dim, device="cuda", generator=gen).to(dtype)
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_replays_equal_direct_estimates_on_new_inputs(pattern):
    captured = CapturedEstimates()
    for seed in (1, 2, 3):
        q, k, _ = _qkv(4, 2, 4096, seed)
        got = captured.layout(pattern, q, k, num_heads=4)
        want = lower(pattern.estimate(q, k), 4096, 4096, num_heads=4, device=q.device)
        assert torch.equal(got.to_dense(), want.to_dense()), seed
    assert captured.captures == 1


def test_schedule_with_captured_estimates_attends_as_without():
    """Layer by layer as a prefill runs: each layer's own q and k, its layout used at once."""
    inputs = [_qkv(4, 2, 4096, seed=5 + layer) for layer in range(3)]
    outputs = []
    for capture in (False, True):
        schedule = LayerSchedule(default=VerticalSlash(64, 256), capture_estimates=capture).bind(3, 4)
        outputs.append([sparse_attention(q, k, v, schedule.layout(i, q, k, 64)) for i, (q, k, v) in enumerate(inputs)])
    for plain, replayed in zip(*outputs, strict=True):
        torch.testing.assert_close(replayed, plain, rtol=0, atol=0)


def test_inference_mode_gets_its_own_capture():
    captured, pattern = CapturedEstimates(), VerticalSlash(64, 256)
    q, k, _ = _qkv(4, 2, 2048, seed=9)
    with torch.inference_mode():
        first = captured.layout(pattern, q, k).to_dense()
    second = captured.layout(pattern, q, k).to_dense()
    assert torch.equal(first, second) and captured.captures == 2


def test_inputs_that_require_grad_are_refused():
    q, k, _ = _qkv(4, 2, 1024, seed=7)
    with pytest.raises(ValueError, match="q: requires grad"):
        CapturedEstimates().layout(VerticalSlash(64, 256), q.requires_grad_(), k, num_heads=4)
