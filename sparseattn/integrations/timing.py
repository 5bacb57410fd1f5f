"""Per-layer attention timing that does not synchronise the device between layers.

On CUDA each call is bracketed by two events on the current stream and read only in `summary`, after
one synchronisation; on the CPU wall-clock time is exact enough and needs no events.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerTimer:
    """Collects (layer, path, milliseconds) for every attention call while ``enabled``."""

    enabled: bool = True
    _open: list[tuple[int, str, Any, Any]] = field(default_factory=list)

    def start(self, device: torch.device) -> object:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(device))
            return event
        return time.perf_counter()

    def stop(self, token: object, device: torch.device, layer: int, path: str) -> None:
        if device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(device))
            self._open.append((layer, path, token, end))
        else:
            self._open.append((layer, path, (time.perf_counter() - token) * 1e3, None))  # type: ignore[operator]

    def reset(self) -> None:
        self._open.clear()

    def records(self) -> list[tuple[int, str, float]]:
        """``(layer, path, ms)`` per call, in call order; synchronises once if events are pending."""
        if any(end is not None for *_, end in self._open):
            torch.cuda.synchronize()
        return [
            (layer, path, start.elapsed_time(end) if end is not None else start)
            for layer, path, start, end in self._open
        ]

    def per_layer(self) -> dict[int, float]:
        """Total attention milliseconds per layer."""
        totals: dict[int, float] = defaultdict(float)
        for layer, _, ms in self.records():
            totals[layer] += ms
        return dict(sorted(totals.items()))
