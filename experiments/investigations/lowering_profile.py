"""Where a lowering's host time goes: per `sparseattn` function, the torch operations it dispatches,
the host time spent inside them (a device sync shows up here, as the wait for the queue to drain)
and the Python time between them.

    PYTHONPATH=experiments python experiments/investigations/lowering_profile.py --device cuda --out $OUT

Cases are the kernel benchmark's per-head mixture and dense causal at 131072 tokens on 128x128
tiles. The counting itself costs host time, so the totals are above `lowering_speed.py`'s wall
times; the split between functions, and the slowest single operations, are what this is for.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from harness import wall_median
from torch.utils._python_dispatch import TorchDispatchMode

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Pattern, PerHead, Streaming, Triangle

PACKAGE = str(Path(__file__).resolve().parents[2] / "sparseattn")


def _caller() -> str:
    """The innermost `sparseattn` function on the stack (frame walking: cheaper than a traceback)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE):
            return f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class HostClock(TorchDispatchMode):
    """Host time inside each dispatched op and between ops, by calling function."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.inside: collections.Counter[str] = collections.Counter()
        self.between: collections.Counter[str] = collections.Counter()
        self.slowest: list[tuple[float, str, str]] = []
        self._last = time.perf_counter()

    def __enter__(self) -> HostClock:
        entered = super().__enter__()
        self._last = time.perf_counter()
        return entered

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        where = _caller()
        result = func(*args, **(kwargs or {}))
        end = time.perf_counter()
        self.ops[where] += 1
        self.inside[where] += end - start
        self.between[where] += max(0.0, start - self._last)
        self.slowest.append((end - start, where, str(func)))
        self._last = time.perf_counter()
        return result


def wall_ms(pattern: Pattern, n: int, device: str, repeats: int = 9) -> float:
    step = lambda: lower(pattern, n, block_size=(128, 128), num_heads=pattern.num_heads, device=device)
    return wall_median(step, device, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    args = parser.parse_args()
    members = [Causal(), Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)]
    cases = {"mixture": PerHead(tuple(members[h % 4] for h in range(32))), "causal": Causal()}
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU"
    lines = [
        "# Lowering host time by function",
        "",
        f"`PYTHONPATH=experiments python experiments/investigations/lowering_profile.py --device {args.device}` — "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {where}, torch {torch.__version__}, "
        f"{args.tokens} tokens, 128x128 tiles. `inside`: host time within the function's torch ops (device",
        "syncs included); `between`: Python time before each of them. Counting adds its own host time.",
    ]
    for name, pattern in cases.items():
        wall_ms(pattern, 4096, args.device, repeats=2)  # first-use caches and kernels out of the way
        plain = wall_ms(pattern, args.tokens, args.device)
        with HostClock():  # the mode's first use imports and caches on the host
            torch.zeros(1, device=args.device) + 1
        clock = HostClock()
        with clock:
            start = time.perf_counter()
            lower(pattern, args.tokens, block_size=(128, 128), num_heads=pattern.num_heads, device=args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            counted = (time.perf_counter() - start) * 1e3
        lines += [
            "",
            f"## {name}: {sum(clock.ops.values())} ops, {plain:.2f} ms uncounted (median of 9), "
            f"{counted:.2f} ms counted",
            "",
            "| function | ops | inside ms | between ms |",
            "|---|---|---|---|",
        ]
        for fn, _ in sorted(clock.inside.items(), key=lambda kv: -(kv[1] + clock.between[kv[0]]))[:20]:
            lines.append(f"| {fn} | {clock.ops[fn]} | {clock.inside[fn] * 1e3:.2f} | {clock.between[fn] * 1e3:.2f} |")
        lines += ["", "Slowest single ops:", "", "| ms | function | op |", "|---|---|---|"]
        for seconds, fn, op in sorted(clock.slowest, reverse=True)[:12]:
            lines.append(f"| {seconds * 1e3:.3f} | {fn} | `{op}` |")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "cuda" if args.device == "cuda" else "cpu"
    (args.out / f"lowering_profile_{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
