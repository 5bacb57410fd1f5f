"""`CapturedEstimates`' checks and the shared-cache collection it relies on (the graphs themselves need a
GPU: tests/gpu/test_captured_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from sparseattn.estimation import CapturedEstimates, VerticalSlash
from sparseattn.estimation.budgets import per_head_tensor
from sparseattn.lowering.tile_grid import tile_bounds
from sparseattn.memo import attached, keeping, shared_cache
from sparseattn.patterns import Causal
from sparseattn.schedule import LayerSchedule


def test_keeping_collects_shared_cache_and_attached_values():
    calls = []

    @shared_cache(maxsize=1)
    def square(x):
        calls.append(x)
        return torch.tensor([x * x])

    class Owner:
        pass

    owner = Owner()
    outside = square(3)
    with keeping() as kept:
        again = square(3)  # found in the cache: still collected
        other = square(4)  # computed, and evicts 3 from the cache
        derived = attached(owner, "key", lambda: torch.zeros(2))
    square(5)
    assert calls == [3, 4, 5]
    assert again is outside
    assert [id(v) for v in kept] == [id(again), id(other), id(derived)]


def test_tile_bounds_are_collected():
    with keeping() as kept:
        bounds = tile_bounds(100, 100, 32, torch.device("cpu"))
    assert len(kept) == 1 and kept[0] is bounds


def test_per_head_budgets_are_one_shared_copy_and_collected():
    """A tuple budget is copied to the device once (a copy per estimate could not be captured)."""
    with keeping() as kept:
        first = per_head_tensor("vertical", (3, 5, 7), 3, torch.long, torch.device("cpu"))
    again = per_head_tensor("vertical", (3, 5, 7), 3, torch.long, torch.device("cpu"))
    assert again is first and first.tolist() == [3, 5, 7]
    assert len(kept) == 1 and kept[0] is first
    # A single value is filled afresh: inside a capture that fill is one more kernel of the graph.
    assert per_head_tensor("vertical", 4, 3, torch.long, torch.device("cpu")).tolist() == [4, 4, 4]


def test_refuses_cpu_tensors_and_static_patterns():
    q, k = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16)
    with pytest.raises(ValueError, match="q: CUDA graphs replay on CUDA"):
        CapturedEstimates().layout(VerticalSlash(8, 16), q, k)
    with pytest.raises(ValueError, match="pattern: expected a dynamic pattern"):
        CapturedEstimates().layout(Causal(), q, k)


def test_schedule_flag_is_validated_and_kept_by_bind():
    with pytest.raises(ValueError, match="capture_estimates: expected a bool"):
        LayerSchedule(default=VerticalSlash(8, 16), capture_estimates="yes")
    bound = LayerSchedule(default=VerticalSlash(8, 16), capture_estimates=True).bind(2, 2)
    assert bound.capture_estimates


def test_schedule_estimates_cpu_inputs_without_capture():
    """Graphs exist on CUDA only; on the CPU a capturing schedule gives the plain estimate's layout."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 96, 16, generator=g), torch.randn(1, 2, 96, 16, generator=g)
    layouts = [
        LayerSchedule(default=VerticalSlash(8, 16, last_q=16), capture_estimates=c).bind(1, 2).layout(0, q, k, 32)
        for c in (False, True)
    ]
    assert torch.equal(layouts[0].to_dense(), layouts[1].to_dense())
