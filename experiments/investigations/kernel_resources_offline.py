"""Registers, spill stack and shared memory of the kernel per launch configuration, compiled for
Hopper (sm_90) without a GPU: Triton compiles to a cubin on any machine, and the cuobjdump that ships
with Triton reads its resource usage.

    PYTHONPATH=experiments python experiments/investigations/kernel_resources_offline.py --out experiments/results

Shared memory decides how many programs a multiprocessor holds (an H200 has 228 KiB per
multiprocessor, 227 KiB per program at most); a configuration that needs more than half of it runs
one program per multiprocessor. The figures depend only on the constexprs (tile shape, head dim,
warps, stages, TMA, head packing, FULL runs, query block in registers), not on lengths or batch. The Triton version here may
differ from the GPU machine's (spills especially): kernel_resources.md has the ones measured there.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import triton

from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.resources import HOPPER_REGISTERS_PER_SM, HOPPER_SHARED_PER_SM, kernel_resources

# (block_m, block_n, warps, stages, heads per program, FULL runs, query block in registers), head dim
# 128, TMA loads.
CONFIGS = [
    (128, 128, 8, 3, 1, True, False),
    (128, 128, 8, 3, 1, True, True),
    (128, 128, 8, 3, 1, False, False),
    (128, 128, 8, 2, 1, True, False),
    (64, 64, 4, 3, 2, True, False),
    (64, 64, 4, 3, 2, False, False),
    (64, 64, 4, 2, 2, True, False),
    (64, 64, 4, 2, 2, False, False),
    (64, 32, 4, 3, 2, True, False),
    (64, 32, 4, 3, 2, False, False),
    (32, 32, 8, 3, 4, True, False),
    (32, 32, 8, 3, 4, True, True),
    (32, 32, 4, 3, 2, True, False),
    (32, 32, 4, 3, 2, True, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    command = "PYTHONPATH=experiments python experiments/investigations/kernel_resources_offline.py " + " ".join(
        "$OUT" if a == str(args.out) else a for a in sys.argv[1:]
    )
    lines = [
        "# Kernel resources, compiled for sm_90 without a GPU",
        "",
        f"`{command}` — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, triton {triton.__version__}.",
        "Head dim 128, bf16, TMA loads, no gathered columns, no register cap. `stack`: bytes of local memory",
        "per thread (register spills); programs per multiprocessor by shared memory "
        f"({HOPPER_SHARED_PER_SM // 1024} KiB each) and by registers (64K each); products on Hopper's "
        "warp-group MMA (wgmma) and on the warp-level mma.sync, counted in the compiled IR.",
        "",
        "| block | warps | stages | heads/program | FULL runs | Q in registers | registers | stack B | shared KiB "
        "| programs/SM by shared memory | by registers | wgmma products | mma.sync products |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for block_m, block_n, warps, stages, pack, runs, q_regs in CONFIGS:
        config = KernelConfig(
            num_warps=warps, num_stages=stages, tma=True, pack=pack, full_runs=runs, q_in_registers=q_regs
        )
        r = kernel_resources((block_m, block_n), 128, config)
        by_registers = HOPPER_REGISTERS_PER_SM // (r.registers * 32 * warps)
        lines.append(
            f"| {block_m}x{block_n} | {warps} | {stages} | {pack} | {'yes' if runs else 'no'} | "
            f"{'yes' if q_regs else 'no'} | {r.registers} | {r.stack_bytes} | {r.shared_bytes / 1024:.0f} | "
            f"{r.programs_per_sm()} | {by_registers} | {r.wgmma_dots} | {r.mma_sync_dots} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_resources_offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
