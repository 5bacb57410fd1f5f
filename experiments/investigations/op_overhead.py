"""What one small torch operation costs the host, on the CPU and on the GPU, beside the lowering.

    PYTHONPATH=experiments python experiments/investigations/op_overhead.py --out $OUT      # writes op_overhead_<device>.md

A static lowering at 128K tokens dispatches a few hundred operations on tensors of a few thousand
elements (lowering_ops.md), so its wall time is about their count times the host cost of one. This
times that cost for typical operations on 4096 int64 elements (median of repeated loops), and, on a
GPU, the device time the mixture's lowering really needs (the sum of its kernels' durations from
torch's profiler) against its wall time: the gap is host time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, PerHead, Streaming, Triangle

OPS = {
    "x + 1": lambda x: x + 1,
    "x >= 3": lambda x: x >= 3,
    "torch.where(x > 5, x, 0)": lambda x: torch.where(x > 5, x, 0),
    "x.clamp(0, 100)": lambda x: x.clamp(0, 100),
    "torch.cat([x, x])": lambda x: torch.cat([x, x]),
    "x[idx]": lambda x: x[x[:64]],
}


def per_op_us(fn, x: torch.Tensor, loops: int = 2000, repeats: int = 5) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(loops):
            fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(times)


def mixture() -> PerHead:
    members = [Causal(), Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)]
    return PerHead(tuple(members[h % 4] for h in range(32)))


def lowering_times(device: str, tokens: int) -> tuple[float, float | None]:
    """(wall ms, summed device-kernel ms or None) of the mixture's lowering."""
    pattern = mixture()

    def step():
        return lower(pattern, tokens, block_size=(128, 128), num_heads=32, device=device)

    step()
    walls = []
    for _ in range(9):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
    if device != "cuda":
        return statistics.median(walls), None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernel_us = sum(e.device_time_total for e in prof.key_averages())
    return statistics.median(walls), kernel_us / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--tokens", type=int, default=131072)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines = [
        "# Host cost of one small torch operation",
        "",
        f"`PYTHONPATH=experiments python experiments/investigations/op_overhead.py` — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} host threads. Microseconds per call on",
        "4096 int64 elements, median of 5 loops of 2000 calls (a CUDA loop is drained once at its end, so",
        "this is the host's dispatch and launch cost, the device running behind it).",
        "",
        "| operation | " + " | ".join(f"{d} us" for d in devices) + " |",
        "|---|" + "---|" * len(devices),
    ]
    for name, fn in OPS.items():
        cells = [f"{per_op_us(fn, torch.arange(4096, device=d)):.1f}" for d in devices]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The kernel benchmark's per-head mixture lowered at {args.tokens} tokens on 128x128 tiles (median of 9):",
        "",
        "| device | wall ms | device kernels ms |",
        "|---|---|---|",
    ]
    for d in devices:
        wall, kernels = lowering_times(d, args.tokens)
        lines.append(f"| {d} | {wall:.2f} | {'—' if kernels is None else f'{kernels:.2f}'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "cuda" if torch.cuda.is_available() else "cpu"
    (args.out / f"op_overhead_{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
