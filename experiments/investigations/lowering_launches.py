"""What one lowering asks of the GPU: kernel launches, host waits and device time, per variant.

    PYTHONPATH=experiments python experiments/investigations/lowering_launches.py --out $OUT      # on a CUDA machine

For the kernel benchmark's per-head mixture and dense causal at 131072 tokens on 128x128 tiles, each
row-segment variant of `lowering_speed.py` is run once under ``torch.profiler`` (after a warm-up call):
launches are the CUDA runtime's and driver's kernel launch calls (torch operations and Triton kernels
alike), host waits the stream synchronisations, and device time the kernels' summed execution time.
Writes ``lowering_launches.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import LOWERING_VARIANTS
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Pattern, PerHead, Streaming, Triangle

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profiled(pattern: Pattern, n: int, options: dict) -> dict:
    step = lambda: lower(pattern, n, block_size=(128, 128), num_heads=pattern.num_heads, device="cuda", **options)
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    count = lambda names: sum(e.count for e in events if e.key in names)
    device_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    # The closing synchronize above is the profiler's, not the lowering's.
    return {"launches": count(LAUNCHES), "host_waits": count(WAITS) - 1, "device_ms": device_us / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--tokens", type=int, default=131072)
    args = parser.parse_args()
    streaming, ashape, triangle = Streaming(128, 4096), AShape(1, 32, 128), Triangle(8, 512, 128)
    mixture = PerHead(tuple([Causal(), streaming, ashape, triangle][h % 4] for h in range(32)))
    rows = [
        {"pattern": name, "variant": variant, **profiled(pattern, args.tokens, options)}
        for name, pattern in (("mixture", mixture), ("causal", Causal()))
        for variant, options in LOWERING_VARIANTS["cuda"]
    ]
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": " ".join(
            ["PYTHONPATH=experiments python experiments/investigations/lowering_launches.py", *sys.argv[1:]]
        ).replace(str(args.out), "$OUT"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowering_launches.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Kernel launches, host waits and device time per lowering",
        "",
        f"`{meta['command']}` — {meta['date']}, {meta['device']}, torch {meta['torch']}, {args.tokens} tokens, "
        "128x128 tiles, one profiled call after a warm-up. Variants as in `lowering_speed.md`.",
        "",
        "| pattern | variant | kernel launches | host waits | device ms |",
        "|---|---|---|---|---|",
        *(
            f"| {r['pattern']} | {r['variant']} | {r['launches']} | {r['host_waits']} | {r['device_ms']:.3f} |"
            for r in rows
        ),
    ]
    (args.out / "lowering_launches.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
