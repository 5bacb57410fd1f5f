"""Registers, spill stack and shared memory of the kernel per launch configuration, compiled for
Hopper (sm_90) without a GPU: Triton compiles to a cubin on any machine, and the cuobjdump that ships
with Triton reads its resource usage.

    PYTHONPATH=. python experiments/kernel_resources_offline.py --out experiments/results

Shared memory decides how many programs a multiprocessor holds (an H200 has 228 KiB per
multiprocessor, 227 KiB per program at most); a configuration that needs more than half of it runs
one program per multiprocessor. The figures depend only on the constexprs (tile shape, head dim,
warps, stages, TMA, head packing, FULL runs), not on lengths or batch. The Triton version here may
differ from the GPU machine's (spills especially): kernel_resources.md has the ones measured there.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparseattn.kernels.triton_fwd import _sparse_fwd_kernel

SM_SHARED_KIB = 228
# (block_m, block_n, warps, stages, heads per program, FULL runs), head dim 128, TMA loads.
CONFIGS = [
    (128, 128, 8, 3, 1, True),
    (128, 128, 8, 3, 1, False),
    (128, 128, 8, 2, 1, True),
    (64, 64, 4, 3, 2, True),
    (64, 64, 4, 3, 2, False),
    (64, 64, 4, 2, 2, True),
    (64, 64, 4, 2, 2, False),
    (64, 32, 4, 3, 2, True),
    (64, 32, 4, 3, 2, False),
]


def signature(block_n: int, head_dim: int, tma: bool, constexprs: dict[str, object]) -> dict[str, str]:
    """Triton type strings for the kernel's parameters (bf16 q/k/v/out, int32 lists and sizes)."""
    types = {}
    for name in inspect.signature(_sparse_fwd_kernel.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out"):
            types[name] = "*bf16"
        elif name in ("K_DESC", "V_DESC"):
            types[name] = f"tensordesc<bf16[{block_n}, {head_dim}]>" if tma else "*bf16"
        elif name in ("LSE", "O_PART", "LSE_PART"):
            types[name] = "*fp32"
        elif name == "qk_scale":
            types[name] = "fp32"
        elif name.isupper():
            types[name] = "*i32"
        else:
            types[name] = "i32"
    return types


def resources(
    block_m: int, block_n: int, warps: int, stages: int, pack: int, runs: bool, head_dim: int = 128, tma: bool = True
) -> dict[str, int]:
    constexprs: dict[str, object] = dict(
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, EVEN_KV=True, HAS_COLS=False,
        NUM_STAGES=stages, USE_TMA=tma, PACK=pack, FULL_RUNS=runs,
    )  # fmt: skip
    names = list(inspect.signature(_sparse_fwd_kernel.fn).parameters)
    source = ASTSource(
        fn=_sparse_fwd_kernel,
        signature=signature(block_n, head_dim, tma, constexprs),
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
    )
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        usage = subprocess.run(
            [os.fspath(tool), "-res-usage", os.fspath(cubin)], check=True, capture_output=True, text=True
        )
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)", usage.stdout)
    if found is None:
        raise RuntimeError(f"cuobjdump gave no resource line: {usage.stdout or usage.stderr}")
    shared = int(kernel.metadata.shared)
    return {"registers": int(found[1]), "stack_bytes": int(found[2]), "shared_bytes": shared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    command = "PYTHONPATH=. python experiments/kernel_resources_offline.py " + " ".join(
        "$OUT" if a == str(args.out) else a for a in sys.argv[1:]
    )
    lines = [
        "# Kernel resources, compiled for sm_90 without a GPU",
        "",
        f"`{command}` — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, triton {triton.__version__}.",
        "Head dim 128, bf16, TMA loads, no gathered columns. `stack`: bytes of local memory per thread",
        f"(register spills); programs per multiprocessor by shared memory alone ({SM_SHARED_KIB} KiB each).",
        "",
        "| block | warps | stages | heads/program | FULL runs | registers | stack B | shared KiB | programs/SM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for block_m, block_n, warps, stages, pack, runs in CONFIGS:
        r = resources(block_m, block_n, warps, stages, pack, runs)
        kib = r["shared_bytes"] / 1024
        lines.append(
            f"| {block_m}x{block_n} | {warps} | {stages} | {pack} | {'yes' if runs else 'no'} | {r['registers']} | "
            f"{r['stack_bytes']} | {kib:.0f} | {int(SM_SHARED_KIB // kib)} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_resources_offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
