"""Where a call's time goes: host time per call, back-to-back device time per call, the do_bench median,
the device time of each kernel as the profiler records it, and the SM clock and power while the call runs
back to back for two seconds (nvidia-smi, read only).

    PYTHONPATH=experiments python experiments/investigations/call_time_breakdown.py --out $OUT

Same shape and default launch as ``bench_kernel.py``. Writes ``call_time_breakdown.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch
import triton
from harness import SHAPE, default_layout, inputs, run_line, run_meta, write_json
from torch.profiler import ProfilerActivity, profile

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.patterns import Causal, Pattern, Triangle

CASES: list[tuple[str, Pattern, int]] = [
    ("triangle", Triangle(), 8192),
    ("triangle", Triangle(), 32768),
    ("triangle", Triangle(), 131072),
    ("causal", Causal(), 32768),
]
CALLS = 50


class ClockSampler:
    """SM clock (MHz) and power (W) from nvidia-smi every 20 ms, from its first sample until exit."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "20"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                self._started.set()
                if self._stop.is_set():
                    proc.terminate()
                    break
                clock, power = (float(x) for x in line.split(","))
                self.samples.append((clock, power))

    def __enter__(self) -> ClockSampler:
        self._thread.start()
        self._started.wait(timeout=10)
        self.samples.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict:
        clocks = [c for c, _ in self.samples] or [float("nan")]
        powers = [p for _, p in self.samples] or [float("nan")]
        return {"sm_mhz_median": statistics.median(clocks), "power_w_median": statistics.median(powers)}


def kernel_times(fn, calls: int = 20) -> dict[str, float]:
    """Mean device ms per call of each of the package's kernels that ``fn`` launches (profiler records)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        # The package's Triton kernels (torch's own, such as a fill, are left out).
        if event.device_type == torch.autograd.DeviceType.CUDA and event.name.startswith("_"):
            name = event.name.split("(")[0]
            totals[name] = totals.get(name, 0.0) + event.time_range.elapsed_us() / 1e3 / calls
    return totals


def per_call(fn, calls: int) -> tuple[float, float]:
    """(host ms, device ms) per call of ``calls`` back-to-back calls (the host runs ahead of the device)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / calls
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    rows = []
    for name, pattern, n in CASES:
        q, k, v = inputs(n)
        layout = default_layout(pattern, n)

        def call(q=q, k=k, v=v, layout=layout):
            return triton_sparse_attention(q, k, v, layout)

        call()
        host_ms, back_to_back_ms = per_call(call, CALLS)
        bench_ms = float(triton.testing.do_bench(call, return_mode="median"))
        kernels = kernel_times(call)
        with ClockSampler() as clock:
            per_call(call, max(CALLS, int(2000 / back_to_back_ms)))
        rows.append(
            {
                "pattern": name,
                "tokens": n,
                "block": list(layout.block_size),
                "host_ms_per_call": host_ms,
                "back_to_back_ms": back_to_back_ms,
                "do_bench_ms": bench_ms,
                "kernels_ms": kernels,
                "sustained": clock.summary(),
            }
        )
        print(rows[-1], flush=True)
    meta = run_meta(__file__, args.out)
    write_json(args.out, "call_time_breakdown", meta, rows)
    lines = [
        "# A call's time against its kernels' device time",
        "",
        run_line(meta),
        f"{SHAPE}; default launch. `host`: Python time per call with the host running ahead; `back to back`:",
        f"device time per call over {CALLS} calls in a row; `do_bench`: its median (L2 flushed before each call);",
        "`kernels`: device time per call of the package's kernels as the profiler records them (20 calls);",
        "SM clock and power: nvidia-smi medians over two seconds of calls back to back.",
        "",
        "| pattern | tokens | block | host ms | back to back ms | do_bench ms | kernels ms | kernel detail "
        "| SM MHz | W |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        detail = ", ".join(f"{k} {v:.3f}" for k, v in r["kernels_ms"].items())
        lines.append(
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {r['host_ms_per_call']:.3f} | "
            f"{r['back_to_back_ms']:.3f} | {r['do_bench_ms']:.3f} | {sum(r['kernels_ms'].values()):.3f} | {detail} | "
            f"{r['sustained']['sm_mhz_median']:.0f} | {r['sustained']['power_w_median']:.0f} |"
        )
    (args.out / "call_time_breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2 :]))


if __name__ == "__main__":
    main()
