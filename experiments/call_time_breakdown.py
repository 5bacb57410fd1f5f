"""Where a call's time goes: the do_bench median of a whole `triton_sparse_attention` call against the
device time of its kernels (CUDA events, the profiler's kernel records), with the SM clock sampled by
nvidia-smi while each is timed.

    PYTHONPATH=. python experiments/call_time_breakdown.py --out $OUT

Same shape and default launch as ``bench_kernel.py``. Writes ``call_time_breakdown.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
from pathlib import Path

import torch
import triton
from kernel_runs import HEAD_DIM, HEADS, KV_HEADS, SHAPE, inputs, run_line, run_meta, write_json
from torch.profiler import ProfilerActivity, profile

from sparseattn.attention import default_block_size
from sparseattn.kernels.triton_fwd import triton_sparse_attention
from sparseattn.patterns import Causal, Pattern, Triangle

CASES: list[tuple[str, Pattern, int]] = [
    ("triangle", Triangle(), 32768),
    ("triangle", Triangle(), 131072),
    ("causal", Causal(), 32768),
]


class ClockSampler:
    """SM clock (MHz) and power (W) from nvidia-smi every 20 ms while active (read only)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits", "-lms", "20"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if self._stop.is_set():
                    proc.terminate()
                    break
                clock, power = (float(x) for x in line.split(","))
                self.samples.append((clock, power))

    def __enter__(self) -> ClockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict:
        clocks = [c for c, _ in self.samples] or [float("nan")]
        powers = [p for _, p in self.samples] or [float("nan")]
        return {"sm_mhz_median": statistics.median(clocks), "power_w_median": statistics.median(powers)}


def kernel_times(fn, calls: int = 20) -> dict[str, float]:
    """Mean device ms per call of each kernel ``fn`` launches, the L2 flushed before each call as do_bench does."""
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        # The package's Triton kernels (the flush is a torch kernel).
        if event.device_type == torch.autograd.DeviceType.CUDA and event.name.startswith("_"):
            name = event.name.split("(")[0]
            totals[name] = totals.get(name, 0.0) + event.time_range.elapsed_us() / 1e3 / calls
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    rows = []
    for name, pattern, n in CASES:
        q, k, v = inputs(n)
        block = default_block_size("triton", HEAD_DIM, q.dtype, pattern, n, n, group=HEADS // KV_HEADS, device="cuda")
        layout = pattern.lower(n, block_size=block, device="cuda")

        def call(q=q, k=k, v=v, layout=layout):
            return triton_sparse_attention(q, k, v, layout)

        call()
        with ClockSampler() as during_bench:
            bench_ms = float(triton.testing.do_bench(call, return_mode="median"))
        with ClockSampler() as during_profile:
            kernels = kernel_times(call)
        rows.append(
            {
                "pattern": name,
                "tokens": n,
                "block": list(block),
                "do_bench_ms": bench_ms,
                "kernels_ms": kernels,
                "clock_during_do_bench": during_bench.summary(),
                "clock_during_profile": during_profile.summary(),
            }
        )
        print(rows[-1], flush=True)
    meta = run_meta("call_time_breakdown.py", args.out)
    write_json(args.out, "call_time_breakdown", meta, rows)
    lines = [
        "# A call's time against its kernels' device time",
        "",
        run_line(meta),
        f"{SHAPE}; default launch; do_bench median of the whole call; kernel ms: the profiler's device time",
        "per call (20 calls, L2 flushed before each); SM clock and power: nvidia-smi medians while each was timed.",
        "",
        "| pattern | tokens | block | do_bench ms | kernels ms | kernel detail | SM MHz (do_bench) | W (do_bench) "
        "| SM MHz (profile) | W (profile) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        detail = ", ".join(f"{k} {v:.3f}" for k, v in r["kernels_ms"].items())
        cb, cp = r["clock_during_do_bench"], r["clock_during_profile"]
        lines.append(
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {r['do_bench_ms']:.3f} | "
            f"{sum(r['kernels_ms'].values()):.3f} | {detail} | {cb['sm_mhz_median']:.0f} | {cb['power_w_median']:.0f} | "
            f"{cp['sm_mhz_median']:.0f} | {cp['power_w_median']:.0f} |"
        )
    (args.out / "call_time_breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2 :]))


if __name__ == "__main__":
    main()
